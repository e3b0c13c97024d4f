"""The simulated account's API key: one per account, shared by the WebSocket and the REST paths,
replaceable (a rotation revokes the old key everywhere at once), compared in constant time; and how
a request presents it (§1: ``Authorization: Bearer`` or, on the WebSocket only, ``?token=``).
"""

from __future__ import annotations

import hmac

from multidict import CIMultiDictProxy


def bearer_token(headers: CIMultiDictProxy[str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without one."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class AccountKey:
    """The one API key the simulated account accepts.

    Raises:
        ValueError: an empty key (at construction or rotation).
    """

    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        self._key = b""
        self.rotate(key)

    def rotate(self, new_key: str) -> None:
        if not new_key:
            raise ValueError("the API key must not be empty")
        self._key = new_key.encode()

    def matches(self, presented: str | None) -> bool:
        """True when ``presented`` is the current key (None, a missing key, never is)."""
        return presented is not None and hmac.compare_digest(presented.encode(), self._key)
