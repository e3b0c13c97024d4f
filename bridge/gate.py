"""The gate in front of an agent: per matched route, the loop and auto-reply guard and the rate
limits, turning the routes that match an event into its :class:`~bridge.plan.Plan`.

The guard covers a route's HTTP sinks (the agents, which may answer mail); file, stdout and NATS
sinks of the same route still get everything. It is decided here, from the event alone; the rate
limits need the counts in the store, so they travel in the plan and are decided in the accept
transaction. Routing stays a union: an event reaches a sink when at least one matching route
naming that sink lets it through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from bridge.addresses import addresses, canonical, unreadable
from bridge.config import (
    Config,
    GuardConfig,
    LimitsConfig,
    RateLimit,
    RouteConfig,
    SinkConfig,
)
from bridge.events import Event
from bridge.plan import Action, Limited, Note, Plan, Reason
from bridge.routing import Router
from bridge.store import Store
from bridge.store.pacing import rate_key

BOUNCE_SENDERS: Final = frozenset({"mailer-daemon", "postmaster"})
"""Local parts of the addresses bounces and delivery reports come from."""
UNREADABLE: Final = "?"
"""The sender of mail whose From names no address the bridge can read: guarded, and limited
under one key per route (no address contains no ``@``)."""
MAX_LEARNED: Final = 10_000
"""Own addresses learned from mail at most: a flood of odd ``to`` headers cannot grow memory."""
MAX_PLANS: Final = 256
"""Plain plans (sinks only) kept for reuse, one per set of sinks the routes give."""


def is_bounce(address: str) -> bool:
    return address.partition("@")[0] in BOUNCE_SENDERS


class OwnAddresses:
    """The account's own addresses: configured ones plus every ``to`` seen on its inboxes."""

    __slots__ = ("configured", "learned")

    def __init__(self, learned: Sequence[str] = ()) -> None:
        self.configured: frozenset[str] = frozenset()
        self.learned: set[str] = set(list(learned)[:MAX_LEARNED])

    def __contains__(self, address: str) -> bool:
        return address in self.configured or address in self.learned

    def learn(self, event: Event) -> tuple[str, ...]:
        """The addresses ``event`` shows to be the account's and that are new (recorded now)."""
        if event.recipient is None or event.via is not None or len(self.learned) >= MAX_LEARNED:
            return ()
        if event.recipient in self.learned:  # the everyday case, already canonical: no parse
            return ()
        found = addresses(event.recipient)
        # OpenMail's `to` is the inbox's own address, one string (protocol notes §2). Anything
        # else came from a sender's header, which must not teach the guard to block others.
        if len(found) != 1:
            return ()
        new = tuple(a for a in found if a not in self)
        self.learned.update(new[: MAX_LEARNED - len(self.learned)])
        return new


@dataclass(frozen=True, slots=True)
class _RouteGate:
    guard: GuardConfig | None
    guarded: tuple[str, ...]  # the route's HTTP sinks, when it has a guard
    free: tuple[str, ...]  # its other sinks
    limits: LimitsConfig


def _route_gate(route: RouteConfig, sinks: Mapping[str, SinkConfig[object]]) -> _RouteGate:
    guard = route.guard_config
    http = tuple(s for s in route.sinks if s in sinks and sinks[s].type == "http")
    guarded = http if guard is not None else ()
    free = tuple(s for s in route.sinks if s not in guarded)
    return _RouteGate(guard, guarded, free, route.limits)


class Gate:
    """Routes plus their guards and limits; ``gate.plan(event)`` says where an event goes.

    Args:
        routes: the configured routes (compiled into ``router``).
        sinks: the configured sinks, to tell which are HTTP.
        own: the account's own addresses, shared across reloads (it learns).
    """

    __slots__ = ("_gates", "_plain", "_plans", "debounce", "own", "router")

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        sinks: Mapping[str, SinkConfig[object]],
        own: OwnAddresses,
    ) -> None:
        self.router = Router(routes)
        self.own = own
        own.configured = frozenset(
            canonical(a) for r in routes if (g := r.guard_config) for a in g.own_addresses
        )
        self._gates = {r.name: _route_gate(r, sinks) for r in routes}
        self.debounce = {name: s.debounce for name, s in sinks.items() if s.debounce}
        """Seconds per debounced sink, for the store to open windows with."""
        # No route guards an HTTP sink or limits anything: the router alone decides.
        self._plain = not any(g.guarded or g.limits.active for g in self._gates.values())
        self._plans: dict[tuple[str, ...], Plan] = {}  # the plain plans, one per set of sinks

    def plan(self, event: Event) -> Plan:
        learned = self.own.learn(event) if event.recipient is not None else ()
        if self._plain:
            sinks = self.router(event)
            if learned:
                return Plan(sinks=sinks, learned=learned)
            if (plan := self._plans.get(sinks)) is None:
                plan = Plan(sinks=sinks)
                if len(self._plans) < MAX_PLANS:
                    self._plans[sinks] = plan
            return plan
        now: dict[str, None] = {}
        limited: list[Limited] = []
        notes: list[Note] = []
        # Every author counts: one of the account's own, or a bounce address, among them guards
        # the event, and they are limited together (a stranger naming a real sender beside
        # their own spends a quota of their own, never that sender's).
        senders = addresses(event.sender)
        if unreadable(event.sender, senders):
            senders = (UNREADABLE,)
        for route in self.router.matching(event):
            gate = self._gates[route.name]
            passing = gate.free
            if gate.guard is not None and gate.guarded:
                reason = self._guard_reason(gate.guard, event, senders)
                if reason is None:
                    passing = route.sinks
                    if event.facts.auto_replyable is False:  # let through by `deliver`
                        notes.append(Note(route.name, Reason.NO_REPLY, Action.MARKED))
                elif gate.guard.quarantine is not None:
                    now[gate.guard.quarantine] = None
                    notes.append(Note(route.name, reason, Action.QUARANTINED))
                else:
                    notes.append(Note(route.name, reason, Action.DROPPED))
            else:
                passing = route.sinks
            if not passing:
                continue
            keys = self._limit_keys(route.name, gate.limits, event, senders)
            if keys:
                quarantine = gate.guard.quarantine if gate.guard is not None else None
                limited.append(
                    Limited(
                        route.name,
                        passing,
                        keys,
                        gate.limits.over,
                        quarantine,
                        gate.limits.max_keys,
                    )
                )
            else:
                now.update(dict.fromkeys(passing))
        return Plan(sinks=tuple(now), limited=tuple(limited), notes=tuple(notes), learned=learned)

    def _guard_reason(
        self, guard: GuardConfig, event: Event, senders: tuple[str, ...]
    ) -> Reason | None:
        if senders == (UNREADABLE,):
            return Reason.UNREADABLE_SENDER
        if any(sender in self.own for sender in senders):
            return Reason.LOOP
        if any(is_bounce(sender) for sender in senders):
            return Reason.BOUNCE
        if event.facts.auto_replyable is False and guard.auto_replyable == "block":
            return Reason.NO_REPLY
        return None

    @staticmethod
    def _limit_keys(
        route: str, limits: LimitsConfig, event: Event, senders: tuple[str, ...]
    ) -> tuple[tuple[Reason, str, RateLimit], ...]:
        keys: list[tuple[Reason, str, RateLimit]] = []
        # An event without a sender or thread is not counted under that limit.
        if limits.per_sender is not None and senders:
            sender = ",".join(sorted(senders))
            keys.append((Reason.PER_SENDER, rate_key(route, "sender", sender), limits.per_sender))
        if limits.per_thread is not None and event.thread_id:
            keys.append(
                (Reason.PER_THREAD, rate_key(route, "thread", event.thread_id), limits.per_thread)
            )
        return tuple(keys)


def gate_of(config: Config, store: Store) -> Gate:
    """The gate a bridge starts with: its routes, and the own addresses its store learned."""
    return Gate(config.routes, config.sinks, OwnAddresses(store.own_addresses))
