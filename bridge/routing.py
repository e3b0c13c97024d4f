"""Routing: routes compiled once from config into matchers; ``Router(event)`` names the sinks.

Routes are tried in order and an event goes to the union of the sinks of every route that matches.
Within a route, every given match key must hold; within a key, any listed value may match. A key
whose field the event lacks (or carries with the wrong type) holds for no value; ``not: M`` holds
exactly when ``M`` does not, so such an event passes ``not:``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.addresses import addresses, ascii_domain
from bridge.config import RouteConfig, RouteMatch
from bridge.events import Event


def _compile_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(_address_pattern(p)) for p in patterns))


def _address_pattern(pattern: str) -> str:
    """A ``from``/``to`` glob in the form :func:`~bridge.addresses.canonical` gives addresses."""
    local, at, domain = pattern.lower().rpartition("@")
    return f"{local}@{ascii_domain(domain)}" if at else pattern.lower()


class Miss(enum.IntEnum):
    """The first match key of a route that an event fails, in the order they are checked: the
    further a route got, the closer the event came to being routed."""

    NO_ROUTES = 0
    INBOX = 1
    EVENT_TYPE = 2
    SENDER = 3
    RECIPIENT = 4
    VERDICT = 5
    CATEGORY = 6
    AUTO_REPLYABLE = 7
    HAS_ATTACHMENTS = 8
    SUBJECT = 9
    NOT = 10


def _excluded(what: str, key: str) -> str:
    return (
        f"the routes for this inbox and event type exclude {what} (match.{key}); "
        "such events are recorded but sent nowhere"
    )


UNROUTED_HINTS: dict[Miss, str] = {
    Miss.NO_ROUTES: "no routes are configured; events are recorded but sent nowhere",
    Miss.INBOX: "no route matches this inbox; its events are recorded but sent nowhere",
    Miss.EVENT_TYPE: "the routes for this inbox exclude this event type (match.event_types); "
    "such events are recorded but sent nowhere",
    Miss.SENDER: _excluded("this sender", "from"),
    Miss.RECIPIENT: _excluded("this recipient", "to"),
    Miss.VERDICT: _excluded("this verdict, or mail without one", "verdict"),
    Miss.CATEGORY: _excluded("this category, or mail without one", "category"),
    Miss.AUTO_REPLYABLE: _excluded(
        "this auto_replyable value, or mail without an explicit one", "auto_replyable"
    ),
    Miss.HAS_ATTACHMENTS: _excluded(
        "mail with (or without) attachments, or without an attachment list", "has_attachments"
    ),
    Miss.SUBJECT: _excluded("this subject", "subject"),
    Miss.NOT: _excluded("what their not: clause names", "not"),
}


Test = Callable[[Event], bool]
"""Whether one match key holds for an event."""


@dataclass(frozen=True, slots=True)
class Check:
    """One match key compiled: ``test`` says whether it holds for an event."""

    key: str
    """The key as written in the config (``from``, ``verdict``, ``not``)."""
    miss: Miss
    test: Test
    negated: Matcher | None = None
    """For ``not``: the match it negates, so a decision can name the key inside it."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a match holds for an event and the keys that decided it, as config key paths:
    the first key that failed, or every key that held (``not.verdict`` inside a ``not:``)."""

    holds: bool
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Matcher:
    """A ``match`` mapping compiled: its checks in the order :class:`Miss` lists them."""

    checks: tuple[Check, ...]

    def miss(self, event: Event) -> Miss | None:
        """The first key ``event`` fails; None when every key holds."""
        for check in self.checks:
            if not check.test(event):
                return check.miss
        return None

    def decide(self, event: Event) -> Decision:
        """What ``route-test`` shows: off the delivery path, so it may walk every key."""
        held: list[str] = []
        for check in self.checks:
            keys: tuple[str, ...] = (check.key,)
            if check.negated is None:
                holds = check.test(event)
            else:
                inner = check.negated.decide(event)
                holds = not inner.holds
                keys = tuple(f"{check.key}.{k}" for k in inner.keys) or (check.key,)
            if not holds:
                return Decision(False, keys)
            held.extend(keys)
        return Decision(True, tuple(held))


def _one_of(
    values: Sequence[str], field: Callable[[Event], str | None], *, fold: bool = False
) -> Test | None:
    """Holds when the field is one of ``values`` (compared case-insensitively when ``fold``);
    None when no value is given."""
    if not values:
        return None
    if not fold:
        exact = frozenset(values)
        return lambda event: field(event) in exact
    folded = frozenset(v.lower() for v in values)

    def test(event: Event) -> bool:
        value = field(event)
        return value is not None and value.lower() in folded

    return test


def _is(want: bool | None, field: Callable[[Event], bool | None]) -> Test | None:
    """Holds when the field is the boolean ``want``; an unknown (None) field never does."""
    if want is None:
        return None
    return lambda event: field(event) is want


def _glob(patterns: Sequence[str], field: Callable[[Event], str | None]) -> Test | None:
    """Holds when one of the globs matches the whole field, case-insensitively."""
    if not patterns:
        return None
    globs = _compile_globs(patterns)

    def test(event: Event) -> bool:
        value = field(event)
        return value is not None and globs.fullmatch(value.lower()) is not None

    return test


def _address_glob(
    patterns: Sequence[str], field: Callable[[Event], str | None], *, every: bool = False
) -> Test | None:
    """Holds when one of the globs matches one of the header's address parts (``every``: each of
    them, and there is one). Never for an event without a message (lifecycle events): it has no
    addresses."""
    if not patterns:
        return None
    globs = _compile_globs(patterns)
    if every:

        def test(event: Event) -> bool:
            found = addresses(field(event))
            return bool(found) and all(globs.fullmatch(a) for a in found)

        return test
    return lambda event: any(globs.fullmatch(a) for a in addresses(field(event)))


def compile_match(match: RouteMatch) -> Matcher:
    """The checks of the keys ``match`` gives, in :class:`Miss` order."""
    keys: list[tuple[str, Miss, Test | None]] = [
        ("inbox_ids", Miss.INBOX, _one_of(match.inbox_ids, lambda e: e.inbox_id)),
        ("event_types", Miss.EVENT_TYPE, _one_of(match.event_types, lambda e: e.type)),
        # Every author: a stranger naming a trusted address beside their own in From is not
        # trusted. Any recipient: mail to support and sales is mail to support.
        ("from", Miss.SENDER, _address_glob(match.senders, lambda e: e.sender, every=True)),
        ("to", Miss.RECIPIENT, _address_glob(match.recipients, lambda e: e.recipient)),
        ("verdict", Miss.VERDICT, _one_of(match.verdict, lambda e: e.facts.verdict, fold=True)),
        ("category", Miss.CATEGORY, _one_of(match.category, lambda e: e.facts.category, fold=True)),
        (
            "auto_replyable",
            Miss.AUTO_REPLYABLE,
            _is(match.auto_replyable, lambda e: e.facts.auto_replyable),
        ),
        (
            "has_attachments",
            Miss.HAS_ATTACHMENTS,
            _is(match.has_attachments, lambda e: e.facts.has_attachments),
        ),
        ("subject", Miss.SUBJECT, _glob(match.subject, lambda e: e.facts.subject)),
    ]
    checks = [Check(key, miss, test) for key, miss, test in keys if test is not None]
    if match.not_ is not None:
        negated = compile_match(match.not_)
        checks.append(Check("not", Miss.NOT, lambda e: negated.miss(e) is not None, negated))
    return Matcher(tuple(checks))


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    sinks: tuple[str, ...]
    matcher: Matcher

    def matches(self, event: Event) -> bool:
        return self.matcher.miss(event) is None

    def miss(self, event: Event) -> Miss | None:
        """The first match key ``event`` fails; None when the route matches it."""
        return self.matcher.miss(event)

    def decide(self, event: Event) -> Decision:
        return self.matcher.decide(event)


def compile_route(route: RouteConfig) -> CompiledRoute:
    return CompiledRoute(name=route.name, sinks=route.sinks, matcher=compile_match(route.match))


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
