"""Routing: routes compiled once from config into matchers; ``Router(event)`` names the sinks.

Routes are tried in order and an event goes to the union of the sinks of every route that matches.
Within a route, every given match key must hold; within a key, any listed value may match.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    sinks: tuple[str, ...]
    inbox_ids: frozenset[str] | None
    event_types: frozenset[str] | None
    senders: re.Pattern[str] | None
    recipients: re.Pattern[str] | None

    def matches(self, event: Event) -> bool:
        if self.inbox_ids is not None and event.inbox_id not in self.inbox_ids:
            return False
        if self.event_types is not None and event.type not in self.event_types:
            return False
        # A match on from/to never holds for an event without a message (lifecycle events).
        if self.senders is not None and not any(
            self.senders.fullmatch(a) for a in addresses(event.sender)
        ):
            return False
        return self.recipients is None or any(
            self.recipients.fullmatch(a) for a in addresses(event.recipient)
        )


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

    def __call__(self, event: Event) -> tuple[str, ...]:
        sinks: dict[str, None] = {}
        for route in self.routes:
            if route.matches(event):
                sinks.update(dict.fromkeys(route.sinks))
        return tuple(sinks)
