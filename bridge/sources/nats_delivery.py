"""What one JetStream delivery says of itself, read off its ack subject: the consumer's sequence
(one more per delivery, to whichever client), the message's stream sequence, how often it was
delivered, and how many messages the consumer had left to give after it."""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg


@dataclass(frozen=True, slots=True)
class Delivery:
    consumer_seq: int
    stream_seq: int
    times: int
    """How often the message was delivered, this time included: 1 for a first delivery."""
    pending: int
    """Messages the consumer had left to give after this one."""

    @classmethod
    def of(cls, msg: Msg) -> Delivery | None:
        """``msg``'s delivery; None for a message without JetStream's ack subject."""
        try:
            meta = msg.metadata
        except (nats.errors.Error, ValueError):
            return None
        sequence = meta.sequence
        return cls(sequence.consumer, sequence.stream, meta.num_delivered, meta.num_pending)
