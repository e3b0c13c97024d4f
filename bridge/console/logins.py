"""Wrong admin tokens per client address: past a few a minute, the address is refused (429 with
``Retry-After``) without its guesses being compared, so the token cannot be guessed at the speed
of the network. Counted for the console's login and for a wrong ``Authorization: Bearer`` alike:
either one would otherwise be the open door.

A sliding window per address: a refused address is let in again once its oldest counted failure
is a minute old, so an operator who mistyped is never kept out for longer than that. Everyone
behind an SSH tunnel or a local reverse proxy shares the loopback address, which therefore has a
larger allowance. An IPv6 client is counted by its /64, which one host usually holds whole. The
table is bounded: past :data:`MAX_PEERS` addresses the one that failed longest ago is forgotten,
so a flood of addresses cannot grow memory.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

LIMIT: Final = 5
"""Wrong tokens an address may send in :data:`WINDOW` before it is refused."""
LOOPBACK_LIMIT: Final = 20
"""The same for a loopback address, which every tunnelled or proxied client shares."""
WINDOW: Final = 60.0
"""Seconds a wrong token counts against its address."""
MAX_PEERS: Final = 4096
"""Addresses remembered at once (each holds at most ``LOOPBACK_LIMIT`` times)."""


LOOPBACK: Final = "loopback"
"""The one key of every loopback address: any local user may connect from 127.0.0.2, .3, ..."""


def peer_key(remote: str | None) -> tuple[str, bool]:
    """The key an address is counted under, and whether it is loopback. Every loopback address
    counts under one key (127.0.0.0/8 and ::1 are all this host); an IPv6 address under its /64
    (an IPv4-mapped one as the IPv4 address); what is not an IP address (a Unix socket's peer)
    under itself."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "", False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return LOOPBACK, True
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False)), False
    return str(address), False


class FailedLogins:
    """Wrong tokens per client address, over a sliding window.

    Args:
        limit: wrong tokens an address may send per ``window``.
        loopback_limit: the same for a loopback address.
        window: seconds a wrong token counts.
        max_peers: addresses remembered at once.
        clock: monotonic seconds; tests pass one they move.
    """

    __slots__ = ("_clock", "_failures", "limit", "loopback_limit", "max_peers", "window")

    def __init__(
        self,
        *,
        limit: int = LIMIT,
        loopback_limit: int = LOOPBACK_LIMIT,
        window: float = WINDOW,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.loopback_limit = loopback_limit
        self.window = window
        self.max_peers = max_peers
        self._clock = clock
        # Each address's failure times, oldest first; the addresses by their last failure.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, remote: str | None) -> int | None:
        """Whole seconds until ``remote`` may present a token again; None when it may now."""
        key, loopback = peer_key(remote)
        times = self._failures.get(key)
        if times is None or len(times) < (self.loopback_limit if loopback else self.limit):
            return None
        wait = times[0] + self.window - self._clock()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait))

    def failed(self, remote: str | None) -> None:
        """``remote`` presented a wrong token."""
        key, loopback = peer_key(remote)
        now = self._clock()
        self._forget_before(now - self.window)
        times = self._failures.get(key)
        if times is None:
            while len(self._failures) >= self.max_peers:
                self._failures.popitem(last=False)
            most = self.loopback_limit if loopback else self.limit
            times = self._failures[key] = deque(maxlen=most)
        else:
            self._failures.move_to_end(key)
        times.append(now)  # past the limit, the oldest goes: the window slides

    def succeeded(self, remote: str | None) -> None:
        """``remote`` logged in with the token: its mistakes are forgiven. (Not for each request
        with the right bearer token: a program polling on loopback would keep wiping the count
        of whoever guesses beside it.)"""
        self._failures.pop(peer_key(remote)[0], None)

    def _forget_before(self, cutoff: float) -> None:
        # Ordered by last failure: the first address whose last failure counts ends the sweep.
        failures = self._failures
        while failures:
            key, times = next(iter(failures.items()))
            if times[-1] > cutoff:
                return
            del failures[key]
