"""Sources: where events come from. The ``Source`` protocol, and ``Spool``: what a source sees of
the store.

A source turns a transport (the OpenMail WebSocket, signed webhook POSTs) into :class:`Event` values
and hands them to ``Spool.accept``, whose result arrives only once they are durably stored or
recognised as duplicates; only then does the source acknowledge them upstream (answer 200, ack a
message, let the cursor move).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from bridge.errors import StoreError
from bridge.events import Event
from bridge.store import AcceptOutcome

AcceptResults = list[AcceptOutcome | StoreError]
"""One result per event handed over: its outcome, or why it was refused (``SpoolFullError``)."""


class Spool(Protocol):
    """The durable spool as a source uses it. Two rules hold here and nowhere else:

    - **Order**: ``accept`` queues its batch when called, not when awaited, so batches handed over
      in order commit in order.
    - **Cursor gaps**: the WebSocket cursor moves with the WebSocket events it points past, in the
      same transaction, and never past a WebSocket event that was refused: a reconnect replays from
      the refused one.
    """

    def accept(self, events: Sequence[Event]) -> asyncio.Future[AcceptResults]:
        """Route, de-duplicate and commit ``events`` in one transaction.

        The future resolves once the batch is durably committed: what a webhook answer or a broker
        ack waits for. Cancelling it stops no write, and a committed event reaches the sinks
        whether or not anyone still waits.

        Raises (through the future):
            StoreUnavailableError: the write failed; nothing of the batch was stored.
        """
        ...

    @property
    def cursor(self) -> str | None:
        """The last WebSocket event durably handled, with no refused one before it."""
        ...

    @property
    def max_bytes(self) -> int: ...

    def has_room_for(self, size: int) -> bool:
        """Whether the store is writable and an event of ``size`` bytes fits now."""
        ...

    async def wait_room(self, size: int = 0) -> None:
        """Until an event of ``size`` bytes fits and the store can write."""
        ...

    async def clear_cursor(self) -> None:
        """Forget the cursor (OpenMail no longer knows it): the next subscribe starts live."""
        ...


class Source(Protocol):
    name: str

    async def start(self, spool: Spool) -> None:
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
