"""The durable spool: accepted events, dedup ids, per-sink delivery rows, dead letters,
quarantined conflicts, the history of delivered events and the WebSocket replay cursor, in one
SQLite database (WAL) that is the bridge's only state, but for the delivered log beside it.

What lives where:

- :mod:`~bridge.store.spool`: :class:`Store`, the public face: open/close, bounds, writes, reads.
- :mod:`~bridge.store.writer`: group commit, one writer thread, failure and the write probe.
- :mod:`~bridge.store.transactions`: what each write does in its transaction; the cursor rules.
- :mod:`~bridge.store.bounds`: :class:`StoreLimits` and the room check.
- :mod:`~bridge.store.rows`: the values handed out, and the one layout of each row.
- :mod:`~bridge.store.batch`: the SQL of accepting a batch: one lookup, one insert per table.
- :mod:`~bridge.store.queries`: the SQL of the other store operations.
- :mod:`~bridge.store.delivered_log`: delivered ids written ahead of their mark's commit.
- :mod:`~bridge.store.database`: opening the file: lock, pragmas, migration, corrupt files.
- :mod:`~bridge.store.schema`: the append-only migrations.
"""

from __future__ import annotations

from bridge.store.bounds import StoreLimits
from bridge.store.database import moved_aside
from bridge.store.rows import (
    AcceptOutcome,
    AcceptResult,
    ConflictReason,
    DeadLetter,
    Delivery,
    HistoryEvent,
    Quarantined,
    ReplayOutcome,
    SinkCounts,
)
from bridge.store.spool import Store

__all__ = [
    "AcceptOutcome",
    "AcceptResult",
    "ConflictReason",
    "DeadLetter",
    "Delivery",
    "HistoryEvent",
    "Quarantined",
    "ReplayOutcome",
    "SinkCounts",
    "Store",
    "StoreLimits",
    "moved_aside",
]
