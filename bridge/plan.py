"""What routing decided for one event, handed to the store with it: the sinks it goes to at once,
the routes whose rate limits the store must decide in the accept transaction, and what the guards
did, to be kept with the event.

Plain values: the router and gate (``bridge.gate``) build them, the store (``bridge.store``)
reads them; neither imports the other.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from bridge.config.values import RateLimit


class Reason(enum.StrEnum):
    """Why a route's guard or limits kept an event from its sinks."""

    LOOP = "loop"  # sent from one of the account's own addresses
    BOUNCE = "mailer_daemon"  # from mailer-daemon@ or postmaster@
    NO_REPLY = "auto_replyable_false"  # OpenMail marked it not to be answered
    UNREADABLE_SENDER = "unreadable_sender"  # a From naming no address the bridge can read
    GATE_ERROR = "gate_error"  # routing it failed (a bug): sent nowhere, kept in the history
    PER_SENDER = "per_sender"
    PER_THREAD = "per_thread"


class Action(enum.StrEnum):
    """What was done instead of delivering at once."""

    QUARANTINED = "quarantined"  # to the guard's quarantine sink
    DROPPED = "dropped"  # recorded, not delivered
    HELD = "held"  # delivered once the rate limit's window admits it
    MARKED = "delivered_no_reply"  # delivered with X-OpenMail-Bridge-No-Reply: true


@dataclass(frozen=True, slots=True)
class Note:
    """One route's guard or limit acting on an event; kept with it (``events list``)."""

    route: str
    reason: Reason
    action: Action

    def as_dict(self) -> dict[str, str]:
        return {"route": self.route, "reason": self.reason.value, "action": self.action.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Note:
        return cls(data["route"], Reason(data["reason"]), Action(data["action"]))


Over = Literal["hold", "quarantine", "drop"]


@dataclass(frozen=True, slots=True)
class Limited:
    """A matched route with rate limits: its sinks get the event only as its limits admit.

    ``keys``: per limit, the key its count is kept under and the limit; all must admit.
    """

    route: str
    sinks: tuple[str, ...]
    keys: tuple[tuple[Reason, str, RateLimit], ...]
    over: Over
    quarantine: str | None
    max_keys: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one event goes. ``sinks``: at once; ``limited``: as the store's rate limits decide;
    ``notes``: what guards did already; ``learned``: own addresses first seen in it."""

    sinks: tuple[str, ...]
    limited: tuple[Limited, ...] = ()
    notes: tuple[Note, ...] = ()
    learned: tuple[str, ...] = ()

    @property
    def simple(self) -> bool:
        """Nothing for the store to decide or record beyond the sinks."""
        return not (self.limited or self.notes or self.learned)


NOWHERE: Final = Plan(sinks=())
