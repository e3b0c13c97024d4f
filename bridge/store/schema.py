"""The state database's schema: the append-only migrations and the schema version they make.

:func:`bridge.store.database.migrate` applies them; the SQL written against the schema is in
:mod:`bridge.store.queries`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

Migration = Sequence[str]

# Migration N (1-based) takes a database from user_version N-1 to N. Append, never edit: a
# released migration has already run on someone's disk.
MIGRATIONS: Final[Sequence[Migration]] = (
    (
        # Small key/value facts: the WebSocket cursor, the time of the last accepted event.
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        # Dedup memory. The primary key is the dedup index; seen_at drives the window prune.
        "CREATE TABLE seen (event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE INDEX seen_by_age ON seen (seen_at)",
        # AUTOINCREMENT: seq and delivery ids are never reused, so a stale id held by a sink
        # worker can never name another event's row. payload last: the row's other columns are
        # read without touching its overflow pages.
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            inbox_id TEXT,
            thread_id TEXT,
            origin TEXT NOT NULL,
            received_at REAL NOT NULL,
            size INTEGER NOT NULL,
            payload BLOB NOT NULL
        )""",
        """CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            seq INTEGER NOT NULL REFERENCES events (seq),
            sink TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            dead_at REAL,
            UNIQUE (seq, sink)
        )""",
        "CREATE INDEX deliveries_by_sink ON deliveries (sink, state, seq)",
    ),
    (
        # What a seen event was: its content identity (bridge.events.content_identity) and inbox,
        # so a known id arriving with other content or for another inbox is a conflict, not a
        # duplicate. Rows from before this migration keep NULL: unknown, never a conflict.
        "ALTER TABLE seen ADD COLUMN content_id TEXT",
        "ALTER TABLE seen ADD COLUMN inbox_id TEXT",
        # The id sinks send, when it is not the dedup key: a payload without event_id is keyed by
        # its content and sent under the webhook's X-Event-Id. Partial: almost every row has none.
        "ALTER TABLE seen ADD COLUMN sent_id TEXT",
        "CREATE INDEX seen_by_sent_id ON seen (sent_id) WHERE sent_id IS NOT NULL",
        # Conflicting events, never delivered, kept for an operator (`dlq list`). payload is NULL
        # when it did not fit the spool bound; size counts toward it like a held event's.
        """CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            origin TEXT NOT NULL,
            type TEXT NOT NULL,
            inbox_id TEXT,
            received_at REAL NOT NULL,
            content_id TEXT,
            quarantined_at REAL NOT NULL,
            size INTEGER NOT NULL,
            payload BLOB
        )""",
        "CREATE INDEX quarantine_by_key ON quarantine (dedup_key)",
    ),
    (
        # Events delivered to every sink, kept after their spool rows go, for `events list` and
        # the console's recent events; trimmed to the newest `state.history` rows. Bounded by
        # count: its payloads do not count toward the spool bound. seq is the event's seq in
        # the spool, so the newest are the largest; a replayed event comes back under a new one.
        """CREATE TABLE history (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL,
            type TEXT NOT NULL,
            inbox_id TEXT,
            thread_id TEXT,
            origin TEXT NOT NULL,
            received_at REAL NOT NULL,
            completed_at REAL NOT NULL,
            sinks TEXT NOT NULL,
            payload BLOB NOT NULL
        )""",
        "CREATE INDEX history_by_event ON history (event_id)",
        # The sinks a still-held event was delivered to, so its history row names them all; its
        # rows go with the event, however it goes.
        """CREATE TABLE delivered (
            seq INTEGER NOT NULL,
            sink TEXT NOT NULL,
            PRIMARY KEY (seq, sink)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER delivered_gone AFTER DELETE ON events
            BEGIN DELETE FROM delivered WHERE seq = old.seq; END""",
    ),
    (
        # When a row may go: held by a route's rate limit until not_before; gathered in its
        # thread's debounce window until window_closes (the window's events share the value, so
        # it also names the window). NULL: at once.
        "ALTER TABLE deliveries ADD COLUMN not_before REAL",
        "ALTER TABLE deliveries ADD COLUMN window_closes REAL",
        # What the routes' guards and rate limits did to an event ([{route, reason, action}] as
        # JSON; NULL: nothing), kept with the event and its history row for `events list`.
        "ALTER TABLE events ADD COLUMN notes TEXT",
        "ALTER TABLE history ADD COLUMN notes TEXT",
        # Sliding-window rate limits: per key (route, limit, sender or thread) the times of its
        # last hits as a JSON array, at most the limit's count; expires when the newest hit
        # leaves the window, and the longest idle keys go first once there are too many.
        """CREATE TABLE rate_keys (
            key TEXT PRIMARY KEY,
            hits TEXT NOT NULL,
            expires REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX rate_keys_by_expiry ON rate_keys (expires)",
        # Open debounce windows, one per sink and thread (else inbox).
        """CREATE TABLE windows (
            sink TEXT NOT NULL,
            lane TEXT NOT NULL,
            closes REAL NOT NULL,
            PRIMARY KEY (sink, lane)
        ) WITHOUT ROWID""",
        # The account's own addresses as seen in the `to` of mail to its inboxes: the guard
        # treats mail from them as a loop.
        """CREATE TABLE own_addresses (
            address TEXT PRIMARY KEY,
            seen_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
