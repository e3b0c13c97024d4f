"""A batch of accepted events in SQL: what the store knows of their ids, and their new rows.

The writer thread holds the GIL only between SQLite calls, and every call gives it up while
SQLite works; with the event loop busy, each call can wait milliseconds to get it back. So a
batch costs a fixed number of calls, not some per event: one lookup of every key and id in the
batch, and one multi-row ``INSERT ... VALUES`` per table for every new row. A batch of 256
events is about eight calls.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Final

import orjson

from bridge.events import Event
from bridge.store import queries

KNOWN_KEY: Final = 1
ID_TAKEN: Final = 2

# Every row naming one of the batch's keys or ids: a seen key (1), a sent id (2), a held event (3);
# and, in the same call, the largest seq and delivery id ever used (0).
_KNOWN_SQL: Final = f"""
    SELECT 0, MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
            COALESCE((SELECT MAX(seq) FROM events), 0)),
        {queries.LAST_DELIVERY_ID}, NULL
    UNION ALL SELECT 1, event_id, content_id, inbox_id FROM seen
        WHERE event_id IN (SELECT value FROM json_each(?1))
    UNION ALL SELECT 2, sent_id, NULL, NULL FROM seen
        WHERE sent_id IN (SELECT value FROM json_each(?1))
    UNION ALL SELECT 3, event_id, NULL, NULL FROM events
        WHERE event_id IN (SELECT value FROM json_each(?1))"""  # noqa: S608 - constant text

_SEEN_INSERT: Final = "INSERT INTO seen (event_id, seen_at, content_id, inbox_id, sent_id)"
_EVENTS_INSERT: Final = """INSERT INTO events
    (seq, event_id, type, inbox_id, thread_id, origin, received_at, size, payload, notes)"""
# Most rows have neither a rate limit's nor a window's time: their statement leaves both columns
# to their NULL default rather than binding two Nones a row (see _insert_rows).
_DELIVERIES_INSERT: Final = "INSERT INTO deliveries (id, seq, sink)"
_TIMED_DELIVERIES_INSERT: Final = """INSERT INTO deliveries
    (id, seq, sink, not_before, window_closes)"""
ROWS_PER_INSERT: Final = 256
"""The most rows one insert statement writes (fewer where the SQLite library binds fewer values
to a statement); a larger batch takes several."""


@functools.cache
def _values_sql(insert: str, width: int, rows: int) -> str:
    """``insert`` of ``rows`` rows of ``width`` values each, as one statement, skipping the rows
    whose first value is NULL (the padding of :func:`_insert_rows`)."""
    values = ",".join(["(" + ",".join("?" * width) + ")"] * rows)
    return f"{insert} SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL"  # noqa: S608


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[object, ...]]) -> None:
    """Write ``rows`` with ``insert`` (a table and its columns, one value per column in each row).

    The values are bound as they are: SQLite parses no text for them, where a JSON array of the
    rows cost a parse of the row for each column (12.7 against 7.5 us per event row, measured
    alone). The statement's row count is the next power of two, so that a handful of statements
    serve every batch size from the connection's statement cache. A padding row is NULL in its
    first value, which the statement skips, and zeros in the rest: the sqlite3 module binds an
    int or a str directly but looks for an adapter for every None (and bytes), ten times the
    cost (0.06 against 0.6 us a value here); padding all NULL cost a few us per event.
    """
    width = len(rows[0])
    # SQLite before 3.32 binds at most 999 values to a statement (later, 32,766): a padded
    # statement must fit the connection's limit, so the rows per statement are a power of two.
    bindable = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    fitting = max(1, min(ROWS_PER_INSERT, bindable))
    most = 1 << (fitting.bit_length() - 1)
    for start in range(0, len(rows), most):
        chunk = rows[start : start + most]
        size = 1 << (len(chunk) - 1).bit_length()
        params = list(itertools.chain.from_iterable(chunk))
        params.extend((None, *itertools.repeat(0, width - 1)) * (size - len(chunk)))
        conn.execute(_values_sql(insert, width, size), params)


# An event that goes nowhere but what a guard or limit did to it is recorded: kept in the history.
_NOTED_HISTORY_SQL: Final = """INSERT INTO history (seq, event_id, type, inbox_id, thread_id,
        origin, received_at, completed_at, sinks, payload, notes)
    SELECT seq, event_id, type, inbox_id, thread_id, origin, received_at, ?2, '[]', payload, notes
    FROM events WHERE seq IN (SELECT value FROM json_each(?1))"""
_DELETE_EVENTS_SQL: Final = "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))"


class KnownIds:
    """What the store knows of a batch's dedup keys and ids, kept current as the batch is
    accepted, so that a later event of the batch sees the earlier ones."""

    __slots__ = ("_held", "_seen", "_sent", "last_ids")

    def __init__(self, conn: sqlite3.Connection, events: Iterable[Event]) -> None:
        names = {name for e in events for name in (e.dedup_key, e.event_id)}
        self._seen: dict[str, tuple[str | None, str | None]] = {}  # key -> content, inbox
        self._sent: set[str] = set()  # ids sent under another key (sent_id)
        self._held: set[str] = set()  # event ids of held events
        self.last_ids = (0, 0)
        """The largest event seq and delivery id ever used, when the batch began."""
        for kind, name, content_id, inbox_id in conn.execute(
            _KNOWN_SQL, (orjson.dumps(sorted(names)),)
        ):
            if kind == 0:
                self.last_ids = (int(name), int(content_id))
            elif kind == 1:
                self._seen[name] = (content_id, inbox_id)
            elif kind == 2:
                self._sent.add(name)
            else:
                self._held.add(name)

    def identity(self, event: Event) -> tuple[int, str | None, str | None] | None:
        """What the store knows of ``event``'s dedup key and id; None when both are new.

        ``(KNOWN_KEY, content_id, inbox_id)``: the key was seen (the content None when unknown, a
        row from before migration 2 or a held event without its seen row); ``(ID_TAKEN, None,
        None)``: the key is new but ``event.event_id`` is already in use under another key, as a
        seen key or sent id, or by a held event.
        """
        key, sent = event.dedup_key, event.event_id
        if key in self._seen:
            return (KNOWN_KEY, *self._seen[key])
        if sent in self._sent or (sent != key and sent in self._seen):
            return ID_TAKEN, None, None
        if sent in self._held:
            return (KNOWN_KEY if sent == key else ID_TAKEN), None, None
        return None

    def add(self, event: Event, *, held: bool) -> None:
        """``event`` was accepted in this batch; ``held``: it has rows to deliver."""
        self._seen[event.dedup_key] = (event.content_id, event.inbox_id)
        if event.event_id != event.dedup_key:
            self._sent.add(event.event_id)
        if held:
            self._held.add(event.event_id)


class NewEvents:
    """New events' rows, written together by :meth:`flush` before the transaction commits.

    seq and delivery ids are handed out here as AUTOINCREMENT would: past the largest ever used,
    never reused, so a stale id held by a sink worker can never name another event's row.
    """

    __slots__ = (
        "_conn",
        "_deliveries",
        "_events",
        "_next_id",
        "_next_seq",
        "_noted",
        "_seen",
        "_timed",
        "_unrouted",
    )

    def __init__(self, conn: sqlite3.Connection, last_ids: tuple[int, int]) -> None:
        """``last_ids``: the largest event seq and delivery id ever used (:class:`KnownIds`)."""
        self._conn = conn
        self._next_seq, self._next_id = last_ids[0] + 1, last_ids[1] + 1
        self._seen: list[tuple[object, ...]] = []
        self._events: list[tuple[object, ...]] = []
        self._deliveries: list[tuple[int, int, str]] = []
        self._timed: list[tuple[int, int, str, float | None, float | None]] = []
        self._unrouted: list[int] = []
        self._noted: list[int] = []

    def add(
        self,
        event: Event,
        sinks: Sequence[str],
        *,
        seen_at: float,
        times: Sequence[tuple[float | None, float | None]] = (),
        notes: str | None = None,
    ) -> tuple[int, list[int]]:
        """Record a new event: its seen id, its row, one pending row per sink; (seq, row ids).

        ``times``: per sink, its row's ``not_before`` and ``window_closes`` (none: both None);
        ``notes``: what guards and limits did, as JSON. With no sinks the event is numbered and
        remembered as seen, and nothing is held; with notes it goes to the history too.
        """
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        ids = list(range(self._next_id, self._next_id + len(sinks)))
        self._next_id += len(sinks)
        sent_id = None if event.event_id == event.dedup_key else event.event_id
        self._seen.append((event.dedup_key, seen_at, event.content_id, event.inbox_id, sent_id))
        payload = event.raw if sinks or notes else b""
        self._events.append(
            (
                seq,
                event.event_id,
                event.type,
                event.inbox_id,
                event.thread_id,
                event.origin.value,
                event.received_at,
                len(payload),
                payload,
                notes,
            )
        )
        if times:
            self._timed.extend(
                (row_id, seq, sink, not_before, window)
                for row_id, sink, (not_before, window) in zip(ids, sinks, times, strict=True)
            )
        else:
            self._deliveries.extend(
                (row_id, seq, sink) for row_id, sink in zip(ids, sinks, strict=True)
            )
        if not sinks and notes:
            self._noted.append(seq)
        if not sinks:
            # Inserted and deleted all the same: AUTOINCREMENT then remembers its seq, which
            # its accept result carries, so no other event is ever given it.
            self._unrouted.append(seq)
        return seq, ids

    def flush(self, *, history: int = 0, at: float = 0.0, history_rows: int = 0) -> int:
        """Write the batch's rows; return the rows in the history after.

        ``history``: how many completed events the history keeps, of its ``history_rows``.
        """
        if not self._seen:
            return history_rows
        conn = self._conn
        _insert_rows(conn, _SEEN_INSERT, self._seen)
        _insert_rows(conn, _EVENTS_INSERT, self._events)
        if self._deliveries:
            _insert_rows(conn, _DELIVERIES_INSERT, self._deliveries)
        if self._timed:
            _insert_rows(conn, _TIMED_DELIVERIES_INSERT, self._timed)
        if self._noted and history:
            history_rows += conn.execute(
                _NOTED_HISTORY_SQL, (orjson.dumps(self._noted), at)
            ).rowcount
            history_rows = queries.trim_history(conn, history_rows, history)
        if self._unrouted:
            conn.execute(_DELETE_EVENTS_SQL, (orjson.dumps(self._unrouted),))
        self._seen.clear()
        self._events.clear()
        self._deliveries.clear()
        self._timed.clear()
        self._unrouted.clear()
        self._noted.clear()
        return history_rows
