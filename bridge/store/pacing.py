"""When an accepted event's rows may go: rate limits decided, and debounce windows opened, inside
the accept transaction, so both survive a restart exactly as they were committed.

Rate limits are exact sliding windows: a key (route, limit, sender or thread) keeps the times of
its last ``count`` hits, and one more is admitted at ``t`` only when the oldest of them is at
least ``window`` before ``t``. Held events take the next free time as their hit, in order, so a
key's hits never go backwards and a later event never overtakes a held one.

Like :mod:`bridge.store.batch`, a batch costs a fixed number of SQLite calls: one read of every
key and window it touches, one write of each kind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Final

import orjson

from bridge.events import Event
from bridge.plan import Action, Limited, Note, Plan

_READ_KEYS_SQL: Final = (
    "SELECT key, hits FROM rate_keys WHERE key IN (SELECT value FROM json_each(?))"
)
_WRITE_KEYS_SQL: Final = """INSERT OR REPLACE INTO rate_keys (key, hits, expires)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
    FROM json_each(?)"""
# Keys of one route sort together (the route's name, then a separator below every character).
_COUNT_ROUTE_KEYS_SQL: Final = "SELECT COUNT(*) FROM rate_keys WHERE key > ?1 AND key < ?1 || x'ff'"
_EVICT_SQL: Final = """DELETE FROM rate_keys WHERE key IN (SELECT key FROM rate_keys
    WHERE key > ?1 AND key < ?1 || x'ff' ORDER BY expires LIMIT ?2)"""
_READ_WINDOWS_SQL: Final = """SELECT w.sink, w.lane, w.closes FROM json_each(?) AS j
    JOIN windows AS w ON w.sink = json_extract(j.value, '$[0]')
        AND w.lane = json_extract(j.value, '$[1]')"""
_WRITE_WINDOWS_SQL: Final = """INSERT OR REPLACE INTO windows (sink, lane, closes)
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
    FROM json_each(?)"""
_LEARN_SQL: Final = (
    "INSERT OR IGNORE INTO own_addresses (address, seen_at) SELECT value, ? FROM json_each(?)"
)
PRUNE_SQL: Final = (
    "DELETE FROM rate_keys WHERE expires < ?1",
    "DELETE FROM windows WHERE closes < ?1",
)
"""Forget keys idle longer than their window and windows already closed (``?1``: now)."""
OWN_ADDRESSES_SQL: Final = "SELECT address FROM own_addresses"


def read_own_addresses(conn: sqlite3.Connection) -> list[str]:
    """The account's own addresses the guard learned, as the store keeps them."""
    return [address for (address,) in conn.execute(OWN_ADDRESSES_SQL)]


SEPARATOR: Final = "\x1f"
"""Between the parts of a rate key and of a window's name: never in a route name or address."""


def rate_key(route: str, limit: str, value: str) -> str:
    return f"{route}{SEPARATOR}{limit}{SEPARATOR}{value}"


def lane(event: Event) -> str:
    """The debounce window an event joins: its thread's, else its inbox's."""
    if event.thread_id:
        return "t:" + event.thread_id
    return "i:" + (event.inbox_id or "")


class Targets:
    """The sinks one event goes to and, per sink, when: None at once, else not before a time.

    Routing is a union: a sink gets the event as soon as any route naming it lets it through.
    """

    __slots__ = ("at",)

    def __init__(self, now_sinks: Iterable[str]) -> None:
        self.at: dict[str, float | None] = dict.fromkeys(now_sinks)

    def add(self, sink: str, not_before: float | None) -> None:
        if sink not in self.at:
            self.at[sink] = not_before
            return
        current = self.at[sink]
        if current is None or not_before is None:
            self.at[sink] = None
        else:
            self.at[sink] = min(current, not_before)


class Pacing:
    """Rate-limit hits and debounce windows of one accept transaction, read once, written once.

    Args:
        conn: the transaction's connection.
        work: the batch's events with their plans (only those with limits or debounce matter).
        debounce: seconds per debounced sink.
    """

    __slots__ = ("_conn", "_debounce", "_hits", "_learned", "_new_keys", "_touched", "_windows")

    def __init__(
        self,
        conn: sqlite3.Connection,
        work: Iterable[tuple[Event, Plan]],
        debounce: Mapping[str, float],
    ) -> None:
        self._conn = conn
        self._debounce = debounce
        keys: set[str] = set()
        windows: set[tuple[str, str]] = set()
        for event, plan in work:
            keys.update(key for limited in plan.limited for _, key, _ in limited.keys)
            if debounce:
                sinks = set(plan.sinks).union(*(lim.sinks for lim in plan.limited))
                sinks.update(lim.quarantine for lim in plan.limited if lim.quarantine)
                windows.update((s, lane(event)) for s in sinks if s in debounce)
        self._hits: dict[str, list[float]] = {}
        if keys:
            for key, hits in conn.execute(_READ_KEYS_SQL, (orjson.dumps(sorted(keys)),)):
                self._hits[key] = orjson.loads(hits)
        self._windows: dict[tuple[str, str], float] = {}
        if windows:
            for sink, name, closes in conn.execute(
                _READ_WINDOWS_SQL, (orjson.dumps(sorted(windows)),)
            ):
                self._windows[sink, name] = closes
        self._touched: dict[str, tuple[list[float], float]] = {}
        self._new_keys: dict[str, int] = {}  # route prefix -> max_keys, for routes with new keys
        self._learned: set[str] = set()

    def decide(self, event: Event, plan: Plan, now: float) -> tuple[Targets, list[Note]]:
        """Where ``event`` goes and when, its route limits applied and hits counted."""
        targets = Targets(plan.sinks)
        notes = list(plan.notes)
        for limited in plan.limited:
            self._limit(limited, now, targets, notes)
        self._learned.update(plan.learned)
        return targets, notes

    def window(self, event: Event, sink: str, now: float) -> float | None:
        """When the debounce window ``event`` joins on ``sink`` closes; None: not debounced."""
        seconds = self._debounce.get(sink)
        if not seconds:
            return None
        name = (sink, lane(event))
        closes = self._windows.get(name)
        # A window closing more than its length from now was opened before the wall clock was
        # stepped back: joining it would hold the event for the step too.
        if closes is None or closes <= now or closes > now + seconds:
            # Tumbling: opened by the first pending event, closed a fixed time later, so a
            # steady stream still flushes.
            closes = self._windows[name] = now + seconds
        return closes

    def _limit(self, limited: Limited, now: float, targets: Targets, notes: list[Note]) -> None:
        slot = now
        over = None
        for reason, key, rate in limited.keys:
            hits = self._hits.get(key, [])
            earliest = now
            if len(hits) >= rate.count:
                earliest = hits[-rate.count] + rate.window
            if hits:
                earliest = max(earliest, hits[-1])  # never ahead of a held one
            if earliest > now and over is None:
                over = reason
            slot = max(slot, earliest)
        if over is not None and limited.over != "hold":
            if limited.over == "quarantine" and limited.quarantine is not None:
                targets.add(limited.quarantine, None)
                notes.append(Note(limited.route, over, Action.QUARANTINED))
            else:
                notes.append(Note(limited.route, over, Action.DROPPED))
            return
        if over is not None:
            notes.append(Note(limited.route, over, Action.HELD))
        for _, key, rate in limited.keys:
            hits = self._hits.get(key, [])
            if key not in self._hits:
                self._hits[key] = hits
                prefix = limited.route + SEPARATOR
                self._new_keys[prefix] = max(self._new_keys.get(prefix, 0), limited.max_keys)
            hits.append(slot)
            del hits[: -rate.count]
            self._touched[key] = (hits, slot + rate.window)
        for sink in limited.sinks:
            targets.add(sink, slot if slot > now else None)

    def flush(self, now: float) -> None:
        conn = self._conn
        if self._touched:
            rows = [
                (key, orjson.dumps(hits).decode(), expires)
                for key, (hits, expires) in self._touched.items()
            ]
            conn.execute(_WRITE_KEYS_SQL, (orjson.dumps(rows),))
            for prefix, max_keys in self._new_keys.items():
                (count,) = conn.execute(_COUNT_ROUTE_KEYS_SQL, (prefix,)).fetchone()
                if count > max_keys:
                    # A storm of new senders forgets the longest idle first, never grows past it.
                    conn.execute(_EVICT_SQL, (prefix, count - max_keys))
        if self._windows:
            rows_w = [(sink, name, closes) for (sink, name), closes in self._windows.items()]
            conn.execute(_WRITE_WINDOWS_SQL, (orjson.dumps(rows_w),))
        if self._learned:
            conn.execute(_LEARN_SQL, (now, orjson.dumps(sorted(self._learned))))
