"""Console sessions: the random ids a login hands the browser as its cookie, held in memory.

The cookie never carries the token itself, so a leaked cookie dies with its session (or with the
process) and the token stays on the operator's side. The table is bounded: past
:data:`MAX_SESSIONS` the oldest session ends, so logins cannot grow memory.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

COOKIE: Final = "openmail_bridge_session"
LIFETIME: Final = 12 * 3600.0
"""Seconds a session lasts after the login that made it."""
MAX_SESSIONS: Final = 256


def _key(session_id: str) -> bytes:
    # Held hashed: a memory dump does not hand out live cookies, and look-ups compare digests.
    return hashlib.sha256(session_id.encode()).digest()


class Sessions:
    """The live sessions.

    Args:
        lifetime: seconds a session lasts.
        capacity: most sessions held; the oldest ends first.
        clock: monotonic seconds; tests pass one they move.
    """

    __slots__ = ("_clock", "_expires", "capacity", "lifetime")

    def __init__(
        self,
        *,
        lifetime: float = LIFETIME,
        capacity: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.capacity = capacity
        self._clock = clock
        self._expires: OrderedDict[bytes, float] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._expires)

    def create(self) -> str:
        """A new session id, valid for ``lifetime`` seconds."""
        now = self._clock()
        self._drop_expired(now)
        while len(self._expires) >= self.capacity:
            self._expires.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        self._expires[_key(session_id)] = now + self.lifetime
        return session_id

    def valid(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        expires = self._expires.get(_key(session_id))
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expires[_key(session_id)]
            return False
        return True

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._expires.pop(_key(session_id), None)

    def _drop_expired(self, now: float) -> None:
        # Every session lives equally long, so expiry follows creation order.
        while self._expires:
            key, expires = next(iter(self._expires.items()))
            if expires > now:
                return
            del self._expires[key]
