"""Sources: where events come from. The ``Source`` protocol and the registry of source types.

A source turns a transport (the OpenMail WebSocket, signed webhook POSTs) into :class:`Event` values
and hands each to ``accept``, which returns only once the event is durably stored or recognised as a
duplicate; only then does the source acknowledge it upstream (answer 200, advance the cursor).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bridge.events import Event
from bridge.store import AcceptOutcome

Accept = Callable[[Event], Awaitable[AcceptOutcome]]


class Source(Protocol):
    name: str

    async def start(self, accept: Accept) -> None:
        """Begin receiving. Returns once the source is set up (listener bound, loop started).

        Raises:
            OSError: a listener cannot bind (a clear start-up failure).
        """
        ...

    async def stop(self) -> None:
        """Stop receiving; acknowledge nothing more upstream. Idempotent."""
        ...

    @property
    def receiving(self) -> bool:
        """True while events can reach the bridge through this source."""
        ...

    def status(self) -> dict[str, object]:
        """A JSON-able view of the source's state for ``/status`` and ``/readyz``."""
        ...
