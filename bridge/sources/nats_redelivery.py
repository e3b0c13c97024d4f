"""Deliveries whose outcome is unknown at a bind: messages the consumer gave an earlier process (one
killed, or cut off in the middle of a fetch) that were never acked. JetStream counts them
ack-pending and gives them out again before anything newer, but only once their ``ack_wait`` has
passed, or at once if that process nak'd them on its way out. A sidecar that stored what it
fetched meanwhile would store the messages after them first, and deliver a thread out of order.

So when the consumer counts more ack-pending messages than this process holds, the gate closes:
what is fetched is still held in stream order (a redelivery goes in ahead of the newer messages
held), but nothing delivered for the first time is stored (nor, once one is held, anything more
fetched) until either all of those deliveries came back, or ``ack_wait`` and a margin have passed
(the longest any of them can still take: whoever had them is gone) and a fetch after that
brought a message delivered for the first time, or nothing: the server hands a pull its expired
deliveries first, so none is left behind by then. The messages this process holds itself are
never waited for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import structlog
from nats.js.api import ConsumerInfo

from bridge.sources.nats_delivery import Delivery

log = structlog.get_logger("bridge.sources.nats")

MARGIN: Final = 0.5
"""Seconds waited past ``ack_wait``: the server's timer for the last of them has fired by then."""


def unknown(info: ConsumerInfo, own: int) -> int:
    """Ack-pending messages of the consumer that are not among the ``own`` this process holds."""
    return max(0, (info.num_ack_pending or 0) - own)


class RedeliveryGate:
    """Args:
    clock: a monotonic clock.
    """

    __slots__ = ("_clock", "_count", "_started", "awaited", "until")

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._count = 0
        self._started = 0.0
        self.awaited = 0
        """Deliveries of unknown outcome not back yet; 0 once the gate is open."""
        self.until = 0.0
        """When, on the clock, the last of them is due at the latest."""

    @property
    def closed(self) -> bool:
        return self.awaited > 0

    def storable(self, delivery: Delivery | None) -> bool:
        """Whether a held message may be stored: anything once the gate is open; while it is
        closed, only a redelivery (one of those awaited, in stream order ahead of the rest)."""
        return not self.closed or (delivery is not None and delivery.times > 1)

    def due(self) -> bool:
        """Whether the time the awaited deliveries can take at most has passed."""
        return self._clock() >= self.until

    def bound(self, info: ConsumerInfo, own: int, ack_wait: float) -> None:
        """At a bind: close the gate if the consumer (``info``) has deliveries of unknown
        outcome."""
        count = unknown(info, own)
        self.awaited = self._count = count
        if not count:
            return
        self._started = self._clock()
        self.until = self._started + ack_wait + MARGIN
        log.warning(
            "nats.awaiting_redelivery",
            stream=info.stream_name,
            consumer=info.name,
            count=count,
            ack_wait=ack_wait,
            wait_at_most=round(ack_wait + MARGIN, 3),
            hint=f"{count} messages were given to an earlier process (killed, or cut off in a "
            "fetch) and never acked; JetStream gives them again once ack_wait has passed, and "
            "nothing newer is stored before them, so that stream order holds",
        )

    def fetched(self, deliveries: Sequence[Delivery | None]) -> None:
        """What one fetch brought (nothing when it timed out)."""
        if not self.closed:
            return
        self.awaited = max(0, self.awaited - sum(1 for d in deliveries if d and d.times > 1))
        back = self._count - self.awaited
        if self.awaited and self.due():
            first_time = not deliveries or any(d is None or d.times == 1 for d in deliveries)
            if first_time:
                self.awaited = 0  # every expired delivery was handed out ahead of this
        if not self.awaited:
            # Fewer back than awaited: another client settled the rest, or the stream removed
            # them.
            log.info(
                "nats.redelivery_awaited",
                count=self._count,
                back=back,
                waited=round(self._clock() - self._started, 3),
            )
