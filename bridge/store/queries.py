"""The SQL of store operations: the statements each read and write runs, the identity lookup
behind dedup and conflicts, inserting an accepted event, the quarantine, the deletes that free
spool bytes (moving delivered events to the history), and a replay from the history.

Plain blocking functions of a connection inside the caller's transaction (no asyncio here).
Row layouts come from :mod:`bridge.store.rows`; the tables from :mod:`bridge.store.schema`.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, NamedTuple

import orjson

from bridge.events import Event
from bridge.store.rows import (
    DEAD_LETTER_COLUMNS,
    DELIVERY_COLUMNS,
    HISTORY_COLUMNS,
    HISTORY_SUMMARY_COLUMNS,
    QUARANTINED_COLUMNS,
)


class State(NamedTuple):
    """What the store keeps in memory between transactions."""

    spool: int  # payload bytes held: events and quarantined payloads
    cursor: str | None  # the WebSocket replay cursor
    data_version: int  # PRAGMA data_version when read: another process's commit changes it
    history_rows: int  # rows in the history: a trim then deletes the excess, walking no more


_DELIVERIES: Final = "FROM deliveries AS d JOIN events AS e ON e.seq = d.seq"

LAST_DELIVERY_ID: Final = """MAX(
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0),
    COALESCE((SELECT MAX(id) FROM deliveries), 0))"""
"""The largest delivery id ever handed out (an expression): ids are never used twice."""
LAST_DELIVERY_ID_SQL: Final = f"SELECT {LAST_DELIVERY_ID}"
INSTANCE_SQL: Final = "SELECT value FROM meta WHERE key = 'instance'"
"""The database's token: a random value made once, naming it in files kept beside it."""

PENDING_SQL: Final = f"""SELECT {DELIVERY_COLUMNS} {_DELIVERIES}
    WHERE d.sink = ? AND d.state = 'pending' AND d.seq > ? ORDER BY d.seq LIMIT ?"""
# The ids as one JSON array, so one cached statement reads any number of them.
PENDING_BY_ID_SQL: Final = f"""SELECT {DELIVERY_COLUMNS} {_DELIVERIES}
    WHERE d.id IN (SELECT value FROM json_each(?)) AND d.state = 'pending' ORDER BY d.seq"""  # noqa: S608 - constant columns
ROWS_PER_STATEMENT: Final = 1000
"""The most rows one statement of the write connection changes, wherever their number has no
other bound (a `dlq purge` or `dlq retry`, a dropped sink, a quarantine purge, a lowered history
bound, a large batch of marks): such work runs as several statements. The write connection keeps
each statement's journal, the pages it changes, in memory until it ends (:func:`prepare_writer`),
and this keeps that to a few MB."""

# The dlq filters are optional: a NULL parameter matches every row.
DLQ_LIST_SQL: Final = f"""SELECT {DEAD_LETTER_COLUMNS} {_DELIVERIES}
    WHERE d.state = 'dead' AND (:sink IS NULL OR d.sink = :sink)
    AND (:event_id IS NULL OR e.event_id = :event_id) ORDER BY d.seq, d.sink"""
# The delivery rows a bulk change takes, (id, seq) past :after in id order, :rows at a time
# (walk_rows): each step starts where the last ended, not from the first row again.
DEAD_ROWS_SQL: Final = """SELECT id, seq FROM deliveries
    WHERE id > :after AND state = 'dead' AND (:sink IS NULL OR sink = :sink)
    AND (:event_id IS NULL OR seq IN (SELECT seq FROM events WHERE event_id = :event_id))
    ORDER BY id LIMIT :rows"""
SINK_ROWS_SQL: Final = """SELECT id, seq FROM deliveries WHERE id > :after AND sink = :sink
    ORDER BY id LIMIT :rows"""
_RETRY_SQL: Final = """UPDATE deliveries SET state = 'pending', attempts = 0, dead_at = NULL
    WHERE id IN (SELECT value FROM json_each(?))"""
_DELETE_ROWS_SQL: Final = "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))"
# Of the events whose rows were just deleted, those left without any.
_DELETE_EMPTIED_SQL: Final = """DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))
    AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.seq = events.seq)"""
RECORD_ATTEMPT_SQL: Final = (
    "UPDATE deliveries SET attempts = ?, last_error = ? WHERE id = ? AND state = 'pending'"
)
DEAD_LETTER_SQL: Final = (
    "UPDATE deliveries SET state = 'dead', attempts = ?, last_error = ?, dead_at = ? WHERE id = ?"
)
SINK_COUNTS_SQL: Final = """SELECT sink, SUM(state = 'pending'), SUM(state = 'dead')
    FROM deliveries GROUP BY sink ORDER BY sink"""
# One index probe per sink (deliveries_by_sink), whatever the backlog: the lowest pending seq is
# the row waiting longest in acceptance order. Sinks come as one JSON array.
OLDEST_PENDING_SQL: Final = """SELECT s.value, (SELECT e.received_at FROM deliveries AS d
    JOIN events AS e ON e.seq = d.seq WHERE d.sink = s.value AND d.state = 'pending'
    ORDER BY d.seq LIMIT 1) FROM json_each(?) AS s"""
LAST_EVENT_SQL: Final = "SELECT value FROM meta WHERE key = 'last_event_at'"
# Quarantined payloads count toward the spool bound like held ones.
SPOOL_SQL: Final = """SELECT (SELECT COALESCE(SUM(size), 0) FROM events)
    + (SELECT COALESCE(SUM(size), 0) FROM quarantine)"""
QUARANTINE_LIST_SQL: Final = f"""SELECT {QUARANTINED_COLUMNS} FROM quarantine
    WHERE (:event_id IS NULL OR event_id = :event_id) ORDER BY id"""  # noqa: S608 - constant columns
_QUARANTINED_ROWS_SQL: Final = """SELECT id, NULL FROM quarantine
    WHERE id > :after AND (:event_id IS NULL OR event_id = :event_id) ORDER BY id LIMIT :rows"""
_UNQUARANTINE_SQL: Final = "DELETE FROM quarantine WHERE id IN (SELECT value FROM json_each(?))"
QUARANTINE_COUNT_SQL: Final = "SELECT COUNT(*) FROM quarantine"
# Newest first; a NULL sink matches every row.
HISTORY_LIST_SQL: Final = f"""SELECT {HISTORY_SUMMARY_COLUMNS} FROM history
    WHERE :sink IS NULL OR EXISTS (SELECT 1 FROM json_each(history.sinks) WHERE value = :sink)
    ORDER BY seq DESC LIMIT :limit"""  # noqa: S608 - constant columns
HISTORY_EVENT_SQL: Final = f"""SELECT {HISTORY_COLUMNS} FROM history
    WHERE event_id = ? ORDER BY seq DESC LIMIT 1"""  # noqa: S608 - constant columns
HISTORY_SINKS_SQL: Final = "SELECT DISTINCT j.value FROM history, json_each(history.sinks) AS j"
# A replay: the event still held gets a row for the sink; else it is held again from its newest
# history row, under a new seq (AUTOINCREMENT: past every seq used).
HELD_SEQ_SQL: Final = "SELECT seq FROM events WHERE event_id = ?"
ADD_DELIVERY_SQL: Final = "INSERT OR IGNORE INTO deliveries (seq, sink) VALUES (?, ?)"
NEWEST_PAST_SQL: Final = (
    "SELECT seq, length(payload) FROM history WHERE event_id = ? ORDER BY seq DESC LIMIT 1"
)
HOLD_AGAIN_SQL: Final = """INSERT INTO events
    (event_id, type, inbox_id, thread_id, origin, received_at, size, payload, notes)
    SELECT event_id, type, inbox_id, thread_id, origin, received_at, length(payload), payload,
        notes
    FROM history WHERE seq = ?"""


def read_state(conn: sqlite3.Connection) -> State:
    """The facts the store keeps in memory, as the database holds them now."""
    (spool,) = conn.execute(SPOOL_SQL).fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    (rows,) = conn.execute("SELECT COUNT(*) FROM history").fetchone()
    return State(int(spool), None if row is None else str(row[0]), int(version), int(rows))


# "WHERE true": without it SQLite would read ON CONFLICT as part of the SELECT's join.
_SET_METAS_SQL: Final = """INSERT INTO meta
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?) WHERE true
    ON CONFLICT (key) DO UPDATE SET value = excluded.value"""


def walk_rows(
    conn: sqlite3.Connection, select: str, params: Mapping[str, object]
) -> Iterator[tuple[bytes, bytes]]:
    """The rows ``select`` matches (an (id, seq) query of :data:`DEAD_ROWS_SQL`'s form), as JSON
    arrays of their ids and of their seqs, :data:`ROWS_PER_STATEMENT` at a time."""
    after = 0
    while rows := conn.execute(
        select, {**params, "after": after, "rows": ROWS_PER_STATEMENT}
    ).fetchall():
        yield orjson.dumps([row[0] for row in rows]), orjson.dumps([row[1] for row in rows])
        after = rows[-1][0]


def retry_dead(conn: sqlite3.Connection, params: Mapping[str, str | None]) -> int:
    """Move the dead rows :data:`DEAD_ROWS_SQL` matches back to pending; how many."""
    return sum(
        conn.execute(_RETRY_SQL, (ids,)).rowcount
        for ids, _ in walk_rows(conn, DEAD_ROWS_SQL, params)
    )


def set_metas(conn: sqlite3.Connection, values: Mapping[str, str | float | None]) -> None:
    """Set the keys (None: delete); one statement for any number of values set."""
    for key in [k for k, v in values.items() if v is None]:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    if present := [[k, v] for k, v in values.items() if v is not None]:
        conn.execute(_SET_METAS_SQL, (orjson.dumps(present),))


def new_instance(conn: sqlite3.Connection) -> str:
    """Make the database's token (:data:`INSTANCE_SQL`), unless it has one; return it."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('instance', ?) ON CONFLICT (key) DO NOTHING",
        (secrets.token_hex(16),),
    )
    return str(conn.execute(INSTANCE_SQL).fetchone()[0])


def quarantine_event(
    conn: sqlite3.Connection,
    event: Event,
    reason: str,
    *,
    keep_payload: bool,
    at: float,
    max_rows: int,
) -> tuple[bool, int]:
    """Record a conflicting event; (whether it is in the quarantine, payload bytes added).

    One row per dedup key and content: OpenMail's retries of one conflicting event add nothing.
    Past ``max_rows`` quarantined events, nothing is recorded.
    """
    held = conn.execute(
        "SELECT 1 FROM quarantine WHERE dedup_key = ? AND content_id IS ?",
        (event.dedup_key, event.content_id),
    ).fetchone()
    if held is not None:
        return True, 0
    (count,) = conn.execute(QUARANTINE_COUNT_SQL).fetchone()
    if count >= max_rows:
        return False, 0
    payload = event.raw if keep_payload else None
    size = len(event.raw) if keep_payload else 0
    conn.execute(
        "INSERT INTO quarantine (event_id, dedup_key, reason, origin, type, inbox_id,"
        " received_at, content_id, quarantined_at, size, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.event_id,
            event.dedup_key,
            reason,
            event.origin.value,
            event.type,
            event.inbox_id,
            event.received_at,
            event.content_id,
            at,
            size,
            payload,
        ),
    )
    return True, size


def purge_quarantine(conn: sqlite3.Connection, event_id: str | None) -> tuple[int, int]:
    """Delete quarantined events (all, or those of ``event_id``); (count, spool bytes after)."""
    count = sum(
        conn.execute(_UNQUARANTINE_SQL, (ids,)).rowcount
        for ids, _ in walk_rows(conn, _QUARANTINED_ROWS_SQL, {"event_id": event_id})
    )
    (spool,) = conn.execute(SPOOL_SQL).fetchone()
    return count, int(spool)


# The oldest rows past the history's bound @keep go (0: every row), of the @history_rows it held
# and the @added just written. The store counts the history's rows as it writes them (State), so
# a trim walks only the rows it deletes, not the thousand it keeps.
_TRIM_STEP: Final = """DELETE FROM history WHERE seq IN (SELECT seq FROM history
    ORDER BY seq LIMIT max(0, @history_rows + @added - @keep))"""


def trim_history(conn: sqlite3.Connection, rows: int, keep: int) -> int:
    """Keep the newest ``keep`` of the history's ``rows`` rows; return how many are left."""
    while rows > keep:
        excess = min(rows - keep, ROWS_PER_STATEMENT)
        params = {"keep": keep, "history_rows": keep + excess, "added": 0}
        deleted = conn.execute(_TRIM_STEP, params).rowcount
        if deleted < excess:
            # Fewer rows than counted: the statement took every one, so the count is now known,
            # and the next batch does not trim again on a stale one.
            return 0
        rows -= deleted
    return rows


# Recording a batch delivered. First the events it leaves without rows (orphaned: every row they
# still have is in the batch), with their payload bytes; then the steps below, in order, with the
# batch's parameters: @ids (its delivery ids, one JSON array), @orphans (those events' seqs, one
# JSON array), @completed_at, @keep, @history_rows and @added (their count: see _TRIM_STEP).
# An orphaned event's history row names the sinks of its rows in the batch and those
# remembered in `delivered` from earlier batches. Ids already gone (a sink dropped, a purge) match
# nothing. The UNION of the two, which drops a sink named in both, builds a temporary b-tree per
# event: only for an event with remembered sinks; for the others, their rows in the order of
# their (seq, sink) key name the sinks alike, at half the step's cost.
_ORPHANED_SQL: Final = """SELECT COALESCE(SUM(e.size), 0), COUNT(*), json_group_array(e.seq)
    FROM events AS e
    WHERE e.seq IN (SELECT d.seq FROM deliveries AS d
            WHERE d.id IN (SELECT value FROM json_each(@ids)))
        AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.seq = e.seq
            AND d.id NOT IN (SELECT value FROM json_each(@ids)))"""
_HISTORY_STEP: Final = """INSERT INTO history (seq, event_id, type, inbox_id, thread_id, origin,
        received_at, completed_at, sinks, payload, notes)
    SELECT e.seq, e.event_id, e.type, e.inbox_id, e.thread_id, e.origin, e.received_at,
        @completed_at,
        CASE WHEN EXISTS (SELECT 1 FROM delivered AS r WHERE r.seq = e.seq)
        THEN (SELECT json_group_array(sink) FROM (SELECT d.sink FROM deliveries AS d
            WHERE d.seq = e.seq UNION SELECT r.sink FROM delivered AS r WHERE r.seq = e.seq))
        ELSE (SELECT json_group_array(sink) FROM (SELECT d.sink FROM deliveries AS d
            WHERE d.seq = e.seq ORDER BY d.sink)) END,
        e.payload, e.notes
    FROM events AS e
    WHERE @keep > 0 AND e.seq IN (SELECT value FROM json_each(@orphans))"""
# An event still held remembers the sinks it was delivered to, for its history row.
_REMEMBER_STEP: Final = """INSERT OR IGNORE INTO delivered (seq, sink)
    SELECT d.seq, d.sink FROM deliveries AS d
    WHERE @keep > 0 AND d.id IN (SELECT value FROM json_each(@ids))
        AND d.seq NOT IN (SELECT value FROM json_each(@orphans))"""
_DELETE_ROWS_STEP: Final = "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(@ids))"
_DELETE_ORPHANS_STEP: Final = (
    "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(@orphans))"
)
_STEPS: Final = (
    _HISTORY_STEP,
    _TRIM_STEP,
    _REMEMBER_STEP,
    _DELETE_ROWS_STEP,
    _DELETE_ORPHANS_STEP,
)

ONE_STATEMENT_FROM: Final = 32
"""A batch of this many ids or more is recorded by one statement: an INSERT into a TEMP view
whose trigger finds the orphaned events, keeps what the store needs in a TEMP row and runs the
steps (:data:`WRITER_TEMP`). The writer thread gives up the GIL for each SQLite call and, while
the event loop runs Python, waits to take it back after each: in six calls the steps ran one at
a time between the event loop's turns, in one they run beside them. A smaller batch, which comes
when the bridge is not busy, runs only the steps it needs, one by one (the same cost alone)."""

# In the trigger the parameters are the view's columns and the TEMP row's values.
_IN_TRIGGER: Final = {
    "ids": "NEW.ids",
    "completed_at": "NEW.completed_at",
    "keep": "NEW.keep",
    "history_rows": "NEW.history_rows",
    "orphans": "(SELECT orphans FROM marked)",
    "added": "(SELECT orphaned FROM marked)",
}


def _trigger_body() -> str:
    """The trigger's statements: the orphans kept in the TEMP row, then the steps."""
    statements = [
        f"UPDATE marked SET (freed, orphaned, orphans) = ({_ORPHANED_SQL})",  # noqa: S608
        *_STEPS,
    ]
    # A parameter missing from _IN_TRIGGER fails at import (KeyError), not in the trigger.
    return re.sub(r"@(\w+)", lambda m: _IN_TRIGGER[m[1]], ";\n".join(statements))


WRITER_TEMP: Final = (
    # What the last batch left: its orphaned events' bytes, their count and their seqs.
    "CREATE TEMP TABLE marked (freed INTEGER, orphaned INTEGER, orphans TEXT)",
    "INSERT INTO temp.marked VALUES (0, 0, '[]')",
    """CREATE TEMP VIEW delivered_batch (ids, completed_at, keep, history_rows)
        AS SELECT NULL, NULL, NULL, NULL WHERE 0""",
    "CREATE TEMP TRIGGER delivered_batch_insert INSTEAD OF INSERT ON delivered_batch BEGIN\n"
    + _trigger_body()
    + ";\nEND",
)
"""The write connection's TEMP objects, made at each open: not in the database file, so no
migration."""
_DELIVERED_BATCH_SQL: Final = (
    "INSERT INTO delivered_batch VALUES (@ids, @completed_at, @keep, @history_rows)"
)
_MARKED_SQL: Final = "SELECT freed, orphaned FROM temp.marked"


def prepare_writer(conn: sqlite3.Connection) -> None:
    """Keep the write connection's temporary storage in memory, and make its TEMP objects
    (:data:`WRITER_TEMP`)."""
    # Each statement inside a transaction keeps a statement journal (the pages it changes, to
    # undo it alone), and SQLite moves one past 64 KiB to a temporary file: a batch of a few
    # dozen delivered marks made, wrote and removed a file in /var/tmp, a fifth of what its
    # mark cost. In memory it costs nothing, and ROWS_PER_STATEMENT bounds it. Set first:
    # changing it drops the connection's TEMP objects.
    conn.execute("PRAGMA temp_store = MEMORY")
    for statement in WRITER_TEMP:
        conn.execute(statement)


def delete_delivered(
    conn: sqlite3.Connection,
    delivery_ids: Sequence[int],
    *,
    history: int,
    at: float,
    history_rows: int,
) -> tuple[int, int]:
    """Delete delivery rows, and the events left without rows; (spool bytes freed, rows in the
    history after). ``conn`` is the write connection (:func:`prepare_writer`).

    An event left without rows moves to the history, which keeps the newest ``history`` (0:
    none) of its ``history_rows``; ``at`` is when it was completed. Ids already gone (their sink
    dropped, or purged, meanwhile) are skipped.
    """
    if history_rows > history:
        # The bound was lowered (to 0 too: the rows kept before go), trimmed apart in bounded
        # statements, so that the batch's own trim deletes no more rows than the batch adds.
        history_rows = trim_history(conn, history_rows, history)
    freed = 0
    for start in range(0, len(delivery_ids), ROWS_PER_STATEMENT):
        ids = delivery_ids[start : start + ROWS_PER_STATEMENT]
        chunk_freed, history_rows = _delete_delivered(conn, ids, history, at, history_rows)
        freed += chunk_freed
    return freed, history_rows


def _delete_delivered(
    conn: sqlite3.Connection,
    delivery_ids: Sequence[int],
    history: int,
    at: float,
    history_rows: int,
) -> tuple[int, int]:
    ids = orjson.dumps(list(delivery_ids))
    if len(delivery_ids) >= ONE_STATEMENT_FROM:
        batch = {"ids": ids, "completed_at": at, "keep": history, "history_rows": history_rows}
        conn.execute(_DELIVERED_BATCH_SQL, batch)
        freed, orphaned = conn.execute(_MARKED_SQL).fetchone()
    else:
        freed, orphaned, orphans = conn.execute(_ORPHANED_SQL, {"ids": ids}).fetchone()
        params = {"ids": ids, "orphans": orphans, "completed_at": at, "keep": history,
                  "history_rows": history_rows, "added": orphaned}  # fmt: skip
        needed = (  # only the steps with something to do, in the order of _STEPS
            history and orphaned,  # history
            history and history_rows + orphaned > history,  # trim
            history and orphaned < len(delivery_ids),  # remember: not when each id orphans one
            True,  # delete the rows
            orphaned,  # delete the orphans
        )
        for step, run in zip(_STEPS, needed, strict=True):
            if run:
                conn.execute(step, params)
    # Either way the history is trimmed to its bound at every batch, so a lowered `state.history`
    # takes effect at the next one, whether or not it completes an event.
    if history:
        history_rows = min(history, history_rows + orphaned)
    return int(freed), history_rows


def delete_deliveries(
    conn: sqlite3.Connection, select: str, params: Mapping[str, str | None]
) -> tuple[int, int]:
    """Delete the delivery rows ``select`` matches (:func:`walk_rows`), and the events they
    leave without rows; (count, spool)."""
    count = 0
    for ids, seqs in walk_rows(conn, select, params):
        count += conn.execute(_DELETE_ROWS_SQL, (ids,)).rowcount
        conn.execute(_DELETE_EMPTIED_SQL, (seqs,))
    (spool,) = conn.execute(SPOOL_SQL).fetchone()
    return count, int(spool)


def prune_seen(conn: sqlite3.Connection, *, before: float, limit: int) -> int:
    """Forget up to ``limit`` ids seen before ``before`` whose event is no longer held."""
    # A held event's row carries the id it is sent under: sent_id when set, else the key.
    return conn.execute(
        "DELETE FROM seen WHERE event_id IN (SELECT s.event_id FROM seen AS s"
        " WHERE s.seen_at < ? AND NOT EXISTS (SELECT 1 FROM events AS e"
        " WHERE e.event_id = COALESCE(s.sent_id, s.event_id)) LIMIT ?)",
        (before, limit),
    ).rowcount
