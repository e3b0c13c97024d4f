"""Routing: routes compiled once from config into matchers; ``Router(event)`` names the sinks.

Routes are tried in order and an event goes to the union of the sinks of every route that matches.
Within a route, every given match key must hold; within a key, any listed value may match.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from bridge.config import RouteConfig
from bridge.events import Event


def addresses(header: str | None) -> list[str]:
    """The lower-cased address parts of a header value: ``Jane <Jane@X.com>`` -> ``jane@x.com``."""
    if not header:
        return []
    return [addr.lower() for _, addr in getaddresses([header]) if addr]


def _compile_globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))


class Miss(enum.IntEnum):
    """The first match key of a route that an event fails, in the order they are checked: the
    further a route got, the closer the event came to being routed."""

    NO_ROUTES = 0
    INBOX = 1
    EVENT_TYPE = 2
    SENDER = 3
    RECIPIENT = 4


UNROUTED_HINTS: dict[Miss, str] = {
    Miss.NO_ROUTES: "no routes are configured; events are recorded but sent nowhere",
    Miss.INBOX: "no route matches this inbox; its events are recorded but sent nowhere",
    Miss.EVENT_TYPE: "the routes for this inbox exclude this event type (match.event_types); "
    "such events are recorded but sent nowhere",
    Miss.SENDER: "the routes for this inbox and event type exclude this sender (match.from); "
    "such events are recorded but sent nowhere",
    Miss.RECIPIENT: "the routes for this inbox and event type exclude this recipient "
    "(match.to); such events are recorded but sent nowhere",
}


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    sinks: tuple[str, ...]
    inbox_ids: frozenset[str] | None
    event_types: frozenset[str] | None
    senders: re.Pattern[str] | None
    recipients: re.Pattern[str] | None

    def matches(self, event: Event) -> bool:
        return self.miss(event) is None

    def miss(self, event: Event) -> Miss | None:
        """The first match key ``event`` fails; None when the route matches it."""
        if self.inbox_ids is not None and event.inbox_id not in self.inbox_ids:
            return Miss.INBOX
        if self.event_types is not None and event.type not in self.event_types:
            return Miss.EVENT_TYPE
        # A match on from/to never holds for an event without a message (lifecycle events).
        if self.senders is not None and not any(
            self.senders.fullmatch(a) for a in addresses(event.sender)
        ):
            return Miss.SENDER
        if self.recipients is not None and not any(
            self.recipients.fullmatch(a) for a in addresses(event.recipient)
        ):
            return Miss.RECIPIENT
        return None


def compile_route(route: RouteConfig) -> CompiledRoute:
    match = route.match
    return CompiledRoute(
        name=route.name,
        sinks=route.sinks,
        inbox_ids=frozenset(match.inbox_ids) if match.inbox_ids else None,
        event_types=frozenset(match.event_types) if match.event_types else None,
        senders=_compile_globs(match.senders),
        recipients=_compile_globs(match.recipients),
    )


class Router:
    """Maps an event to the sinks its routes name, in first-named order, without repeats."""

    __slots__ = ("routes",)

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = tuple(compile_route(r) for r in routes)

    def matching(self, event: Event) -> list[CompiledRoute]:
        return [r for r in self.routes if r.matches(event)]

    def why_unrouted(self, event: Event) -> Miss:
        """Why no route takes ``event``: the key that stopped the route that came closest.

        Only asked once no route matched, so it costs nothing on the routed path.
        """
        misses = [m for r in self.routes if (m := r.miss(event)) is not None]
        return max(misses, default=Miss.NO_ROUTES)

    def __call__(self, event: Event) -> tuple[str, ...]:
        sinks: dict[str, None] = {}
        for route in self.routes:
            if route.matches(event):
                sinks.update(dict.fromkeys(route.sinks))
        return tuple(sinks)
