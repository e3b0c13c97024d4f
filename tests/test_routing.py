"""Routing: the pure ``Router`` (order, union, match keys, address globs), and an event set over
several inboxes through a running bridge landing in exactly the sinks ``route-test`` names."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import protocol
from bridge.addresses import addresses, canonical
from bridge.cli import main
from bridge.config import RouteConfig, RouteMatch, load_config
from bridge.events import Event, Origin, parse_event
from bridge.routing import UNROUTED_HINTS, Miss, Router
from bridge.simulator import Simulator
from bridge.sinks import SINK_TYPES
from bridge.store import Store
from bridge.supervisor import Supervisor
from tests.conftest import (
    WEBHOOK_SECRET,
    bridge_config_dict,
    make_config,
    read_lines,
    running_bridge,
    wait_until,
    write_config,
)

UNROUTED_METRIC = "openmail_bridge_events_unrouted_total"


def route(name: str, sinks: tuple[str, ...] | list[str], **match: Any) -> RouteConfig:
    return RouteConfig(name=name, sinks=tuple(sinks), match=RouteMatch(**match))


def message(
    *,
    inbox_id: str | None = "inb_a",
    sender: str | None = "Jane <jane@x.com>",
    to: str | None = "support@openmail.sh",
    event_id: str = "evt_1",
    thread_id: str | None = "thr_1",
) -> Event:
    msg: dict[str, object] = {"subject": "hi"}
    if sender is not None:
        msg["from"] = sender
    if to is not None:
        msg["to"] = to
    body = {
        "event": "message.received",
        "event_id": event_id,
        "inbox_id": inbox_id,
        "thread_id": thread_id,
        "message": msg,
    }
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


def lifecycle(kind: str = "inbox.suspended", *, inbox_id: str | None = "inb_a") -> Event:
    body = {
        "event": kind,
        "event_id": "evt_life",
        "inbox_id": inbox_id,
        "inbox_address": "support@openmail.sh" if inbox_id else None,
        "pod_id": "pod_1",
        "reason": "abuse",
    }
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


# --- Router: pure ---------------------------------------------------------------------------------


def test_sinks_are_the_union_of_matching_routes_in_first_named_order() -> None:
    router = Router(
        [
            route("first", ["s1", "s2"], inbox_ids=("inb_a",)),
            route("nope", ["s4"], inbox_ids=("inb_other",)),
            route("second", ["s3", "s2"], event_types=("message.received",)),
            route("third", ["s1", "s5"]),
        ]
    )
    event = message()
    assert router(event) == ("s1", "s2", "s3", "s5")
    assert [r.name for r in router.matching(event)] == ["first", "second", "third"]


def test_no_matching_route_means_no_sinks() -> None:
    router = Router([route("only-b", ["s1"], inbox_ids=("inb_b",))])
    assert router(message(inbox_id="inb_a")) == ()
    assert router.matching(message(inbox_id="inb_a")) == []
    assert Router([])(message()) == ()


def test_a_route_without_match_keys_takes_every_event() -> None:
    router = Router([route("all", ["s"])])
    assert router(message()) == ("s",)
    assert router(lifecycle("pod.suspended", inbox_id=None)) == ("s",)


def test_keys_are_anded_and_values_within_a_key_ored() -> None:
    router = Router(
        [
            route(
                "r",
                ["s"],
                inbox_ids=("inb_a", "inb_b"),
                event_types=("message.received", "inbox.suspended"),
            )
        ]
    )
    assert router(message(inbox_id="inb_a")) == ("s",)
    assert router(message(inbox_id="inb_b")) == ("s",)
    assert router(message(inbox_id="inb_c")) == ()
    assert router(lifecycle("inbox.suspended", inbox_id="inb_b")) == ("s",)
    assert router(lifecycle("inbox.reactivated", inbox_id="inb_b")) == ()  # type not listed
    assert router(lifecycle("inbox.suspended", inbox_id="inb_c")) == ()  # inbox not listed


@pytest.mark.parametrize(
    ("routes", "event", "miss"),
    [
        ([], message(), Miss.NO_ROUTES),
        ([route("r", ["s"], inbox_ids=("inb_b",))], message(), Miss.INBOX),
        (
            [route("r", ["s"], inbox_ids=("inb_a",), event_types=("message.sent",))],
            message(),
            Miss.EVENT_TYPE,
        ),
        # The route that came closest decides: one names another inbox, one the wrong type.
        (
            [
                route("other", ["s"], inbox_ids=("inb_b",)),
                route("types", ["s"], event_types=("message.sent",)),
            ],
            message(),
            Miss.EVENT_TYPE,
        ),
        ([route("r", ["s"], senders=("*@y.com",))], message(), Miss.SENDER),
        ([route("r", ["s"], recipients=("sales@*",))], message(), Miss.RECIPIENT),
        # A lifecycle event has no sender: a route on from never takes it.
        ([route("r", ["s"], senders=("*@x.com",))], lifecycle(), Miss.SENDER),
    ],
)
def test_why_unrouted_names_the_key_that_stopped_the_closest_route(
    routes: list[RouteConfig], event: Event, miss: Miss
) -> None:
    router = Router(routes)
    assert router(event) == ()
    assert router.why_unrouted(event) is miss
    assert set(UNROUTED_HINTS) == set(Miss)  # every reason has its hint


def test_event_types_hint_does_not_blame_the_inbox() -> None:
    assert "event type" in UNROUTED_HINTS[Miss.EVENT_TYPE]
    assert "inbox;" not in UNROUTED_HINTS[Miss.EVENT_TYPE]
    assert "no route matches this inbox" in UNROUTED_HINTS[Miss.INBOX]


def test_inbox_ids_never_match_an_event_without_an_inbox() -> None:
    router = Router([route("r", ["s"], inbox_ids=("inb_a",))])
    assert router(lifecycle("pod.suspended", inbox_id=None)) == ()


@pytest.mark.parametrize(
    ("sender", "pattern", "matches"),
    [
        ("Jane <Jane@X.com>", "*@x.com", True),
        ("jane@x.com", "*@X.COM", True),
        ('"Jane Doe" <JANE@x.com>', "jane@x.com", True),
        ("jane@x.com", "j?ne@x.com", True),
        ("jane@x.com", "[jk]ane@*", True),
        ("jane@x.co.uk", "*@x.com", False),
        ("jane@xycom", "*@x.com", False),  # the dot is literal, not a regex wildcard
        ("jane@sub.x.com.evil.org", "*@*.x.com", False),  # the whole address must match
        ('"ceo@x.com" <attacker@evil.org>', "*@x.com", False),  # display name is not the address
        ("ceo@x.com <attacker@evil.org>", "*@x.com", False),  # nor unquoted, @ and all
        ("attacker@evil.org, ceo@x.com", "*@x.com", False),  # every author must match
        ("a@x.com, B <b@x.com>", "*@x.com", True),
        ("x.com support <help@y.org>", "*x.com*", False),
        ("", "*", False),
    ],
)
def test_from_globs_match_the_address_part_case_insensitively(
    sender: str, pattern: str, matches: bool
) -> None:
    router = Router([route("r", ["s"], senders=(pattern,))])
    assert router(message(sender=sender)) == (("s",) if matches else ())


def test_to_globs_match_any_recipient_address() -> None:
    router = Router([route("r", ["s"], recipients=("SUPPORT@*",))])
    assert router(message(to="Support Team <support@openmail.sh>")) == ("s",)
    assert router(message(to="sales@openmail.sh, support@OpenMail.sh")) == ("s",)
    assert router(message(to="sales@openmail.sh")) == ()
    assert router(message(to=None)) == ()


def test_several_globs_in_one_key_any_may_match() -> None:
    router = Router([route("r", ["s"], senders=("*@a.com", "*@b.com"))])
    assert router(message(sender="x@B.com")) == ("s",)
    assert router(message(sender="x@c.com")) == ()


@pytest.mark.parametrize("kind", sorted(protocol.LIFECYCLE_EVENT_TYPES))
@pytest.mark.parametrize("key", ["senders", "recipients"])
def test_from_and_to_never_match_lifecycle_events(kind: str, key: str) -> None:
    router = Router([route("r", ["s"], **{key: ("*",)})])
    inbox_id = "inb_a" if kind.startswith("inbox.") else None
    assert router(lifecycle(kind, inbox_id=inbox_id)) == ()
    assert router(message()) == ("s",)  # the same route does take a message


def test_from_and_to_together_must_both_hold() -> None:
    router = Router([route("r", ["s"], senders=("*@x.com",), recipients=("support@*",))])
    assert router(message(sender="a@x.com", to="support@openmail.sh")) == ("s",)
    assert router(message(sender="a@x.com", to="sales@openmail.sh")) == ()
    assert router(message(sender="a@y.com", to="support@openmail.sh")) == ()


@pytest.mark.parametrize(
    "header",
    [
        "ceo@x.com <attacker@evil.org>",
        "ceo@x.com (the boss) <attacker@evil.org>",
    ],
)
def test_an_address_in_a_display_name_is_never_read(header: str) -> None:
    # The email package's parser reads the unquoted name as an address of its own.
    assert addresses(header) == ("attacker@evil.org",)


def test_addresses_lowercases_the_address_parts() -> None:
    assert addresses("Jane <Jane@X.com>") == ("jane@x.com",)
    assert addresses("A <a@x.com>, b@Y.org") == ("a@x.com", "b@y.org")
    assert addresses('"x, y" <q@w.e>, Team: a@b.c, <d@e.f>;') == ("q@w.e", "a@b.c", "d@e.f")
    assert addresses(None) == ()
    assert addresses("") == ()


def test_a_route_pattern_with_an_international_domain_matches_either_form() -> None:
    router = Router([route("r", ["s"], senders=("*@Bücher.example",))])
    assert router(message(sender="Jane <jane@bücher.example>")) == ("s",)
    assert router(message(sender="jane@xn--bcher-kva.example")) == ("s",)
    assert router(message(sender="jane@bucher.example")) == ()


def test_config_keys_from_and_to_reach_the_router(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        sinks={"vip": {"type": "file", "path": str(tmp_path / "vip.jsonl")}},
        routes=[
            {
                "name": "vip",
                "match": {"from": ["*@VIP.example"], "to": ["*@openmail.sh"]},
                "sinks": ["vip"],
            }
        ],
    )
    router = Router(config.routes)
    assert router(message(sender="Boss <boss@vip.example>")) == ("vip",)
    assert router(message(sender="boss@other.example")) == ()
    assert router(lifecycle()) == ()


# --- Through a running bridge ---------------------------------------------------------------------

INBOXES = ("inb_alpha", "inb_beta", "inb_gamma")
SINK_NAMES = ("support", "vip", "ops", "sales", "audit")
ROUTES: list[dict[str, Any]] = [
    {"name": "support", "match": {"inbox_ids": ["inb_alpha"]}, "sinks": ["support", "audit"]},
    {"name": "vip", "match": {"from": ["*@vip.example"]}, "sinks": ["vip"]},
    {
        "name": "ops",
        "match": {"event_types": ["inbox.suspended", "pod.suspended"]},
        "sinks": ["ops", "audit"],
    },
    {
        "name": "sales",
        "match": {"to": ["BETA@*"], "event_types": ["message.received"]},
        "sinks": ["sales"],
    },
    {"name": "any-sender", "match": {"from": ["*"]}, "sinks": ["audit"]},
]


@pytest.fixture
async def sim3() -> AsyncIterator[Simulator]:
    simulator = Simulator(inboxes=INBOXES, retry_scale=0.01, ping_interval=5.0, pong_timeout=5.0)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def routing_config(tmp_path: Path, sim: Simulator) -> Path:
    sinks = {name: {"type": "file", "path": str(tmp_path / f"{name}.jsonl")} for name in SINK_NAMES}
    data = bridge_config_dict(tmp_path, sim, sinks=sinks, routes=ROUTES)
    return write_config(tmp_path / "config.yaml", data)


async def start_routed_bridge(sim: Simulator, supervisor: Any) -> None:
    await wait_until(lambda: any(c.subscribed for c in sim.connections))
    port = supervisor.webhook.port
    sim.set_webhook(f"http://127.0.0.1:{port}/webhooks", WEBHOOK_SECRET)


async def _no_rows(store: Store) -> bool:
    return await store.sink_counts() == {}


def route_test(capsys: pytest.CaptureFixture[str], config: Path, event: Path) -> dict[str, Any]:
    """``openmail-bridge route-test --json``, in-process; the real executable is run below."""
    capsys.readouterr()  # drop what the in-process bridge logged to stdout
    assert main(["route-test", "-c", str(config), "--json", str(event)]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def unrouted_total(supervisor: Supervisor) -> float:
    """Unrouted events over every source: whichever of WebSocket and webhook got one first."""
    return sum(
        supervisor.metrics.registry.get_sample_value(UNROUTED_METRIC, {"source": source}) or 0.0
        for source in ("websocket", "webhook")
    )


async def test_event_set_lands_in_exactly_the_named_sinks_and_route_test_agrees(
    tmp_path: Path, sim3: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = routing_config(tmp_path, sim3)
    vip, plain = "Jane <Jane@VIP.Example>", "Tom <tom@example.com>"
    expected: dict[str, set[str]] = {}
    async with running_bridge(load_config(config_path, sink_types=SINK_TYPES)) as supervisor:
        await start_routed_bridge(sim3, supervisor)

        async def msg(inbox: str, sender: str, sinks: set[str]) -> None:
            event_id = await sim3.inject(inbox_id=inbox, message={"from": sender})
            expected[event_id] = sinks

        async def life(kind: str, inbox: str | None, sinks: set[str]) -> None:
            event_id = await sim3.inject(sim3.lifecycle_event(kind, inbox_id=inbox))
            expected[event_id] = sinks

        await msg("inb_alpha", plain, {"support", "audit"})
        await msg("inb_alpha", vip, {"support", "audit", "vip"})
        await msg("inb_beta", plain, {"sales", "audit"})
        await msg("inb_beta", vip, {"sales", "audit", "vip"})
        await msg("inb_gamma", plain, {"audit"})
        await msg("inb_gamma", "VIP Desk <desk@vip.example.com>", {"audit"})
        await life("inbox.suspended", "inb_beta", {"ops", "audit"})
        await life("inbox.reactivated", "inb_alpha", {"support", "audit"})
        await life("inbox.reactivated", "inb_gamma", set())  # from: ["*"] never holds here
        await life("pod.suspended", None, {"ops", "audit"})
        await life("pod.reactivated", None, set())

        def wanted(sink: str) -> set[str]:
            return {e for e, sinks in expected.items() if sink in sinks}

        def landed(sink: str) -> list[str]:
            return [line["event_id"] for line in read_lines(tmp_path / f"{sink}.jsonl")]

        def unrouted() -> float:
            return unrouted_total(supervisor)

        await wait_until(
            lambda: all(len(landed(s)) >= len(wanted(s)) for s in SINK_NAMES) and unrouted() >= 2
        )
        # Every outbox row delivered: a misrouted one, committed with the others, has landed too.
        await wait_until(lambda: _no_rows(supervisor.store))
        for sink in SINK_NAMES:
            assert sorted(landed(sink)) == sorted(wanted(sink)), sink
        assert unrouted() == 2

    # route-test on the very payloads the simulator sent agrees with where they landed.
    by_id = {str(e["event_id"]): e for e in sim3.events}
    assert set(by_id) == set(expected)
    for event_id, sinks in expected.items():
        path = tmp_path / f"{event_id}.json"
        path.write_text(json.dumps(by_id[event_id]))
        result = route_test(capsys, config_path, path)
        assert result["event_id"] == event_id
        assert set(result["sinks"]) == sinks, event_id
        assert bool(result["routes"]) == bool(sinks)


def test_route_test_cli_reads_stdin_and_names_routes(tmp_path: Path) -> None:
    import subprocess

    sinks = {name: {"type": "file", "path": str(tmp_path / f"{name}.jsonl")} for name in SINK_NAMES}
    config = write_config(
        tmp_path / "c.yaml", bridge_config_dict(tmp_path, sinks=sinks, routes=ROUTES)
    )
    event = {
        "event": "message.received",
        "event_id": "evt_cli",
        "inbox_id": "inb_beta",
        "thread_id": "thr_1",
        "message": {"from": "Boss <BOSS@vip.example>", "to": "beta@sim.openmail.sh"},
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "route-test", "-c", str(config), "--json", "-"],
        input=json.dumps(event).encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {
        "event_id": "evt_cli",
        "routes": ["vip", "sales", "any-sender"],
        "sinks": ["vip", "sales", "audit"],
        # Per route, in config order: the key that failed, or every key that held.
        "decisions": [
            {"route": "support", "matched": False, "keys": ["inbox_ids"]},
            {"route": "vip", "matched": True, "keys": ["from"]},
            {"route": "ops", "matched": False, "keys": ["event_types"]},
            {"route": "sales", "matched": True, "keys": ["event_types", "to"]},
            {"route": "any-sender", "matched": True, "keys": ["from"]},
        ],
    }
    text = subprocess.run(
        [sys.executable, "-m", "bridge", "route-test", "-c", str(config), "-"],
        input=json.dumps({**event, "inbox_id": "inb_gamma", "message": {}}).encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert text.returncode == 0
    assert "(none: the event would be unrouted)" in text.stdout.decode()


async def test_unrouted_events_are_counted_and_logged_once_per_inbox(
    tmp_path: Path, sim3: Simulator
) -> None:
    routes = [{"name": "alpha", "match": {"inbox_ids": ["inb_alpha"]}, "sinks": ["audit"]}]
    config = make_config(tmp_path, sim3, routes=routes)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as supervisor:
            await start_routed_bridge(sim3, supervisor)
            routed = await sim3.inject(inbox_id="inb_alpha")
            for _ in range(3):
                await sim3.inject(inbox_id="inb_beta")
                await sim3.inject(inbox_id="inb_gamma")
            for _ in range(2):
                await sim3.inject(sim3.lifecycle_event("pod.suspended"))

            def unrouted() -> float:
                return unrouted_total(supervisor)

            await wait_until(lambda: unrouted() >= 8)
            await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) >= 1)
            assert unrouted() == 8
            assert b'openmail_bridge_events_unrouted_total{source="' in supervisor.metrics.render()
            store = supervisor.store
            assert store is not None
            # Unrouted events hold no rows: once the routed one is delivered, nothing is left.
            await wait_until(lambda: _no_rows(store))
            assert store.spool_bytes == 0
    assert [line["event_id"] for line in read_lines(tmp_path / "events.jsonl")] == [routed]
    warnings = [e for e in logs if e["event"] == "event.unrouted"]
    assert sorted((w["inbox_id"] or "") for w in warnings) == ["", "inb_beta", "inb_gamma"]
    assert all(w["log_level"] == "warning" for w in warnings)
    accepted = [e for e in logs if e["event"] == "event.accepted"]
    assert len(accepted) == 9  # unrouted events are still accepted (recorded), not dropped


# --- address parsing: the everyday shapes skip the email package's parser --------------------

_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_local = st.lists(st.text(_ATEXT, min_size=1, max_size=6), min_size=1, max_size=3).map(".".join)
_domain = st.lists(st.text("abcXYZ019-", min_size=1, max_size=6), min_size=1, max_size=3).map(
    ".".join
)
_mailbox = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain)
_name = st.text("abcXYZ019 ._-\t", max_size=12)
_header = st.one_of(
    _mailbox,
    st.builds(lambda name, box: f"{name}<{box}>", _name, _mailbox),
    st.builds(lambda name, box, pad: f"{pad}{name} <{box}>{pad}", _name, _mailbox, st.text(" \t")),
)


@given(_header)
@settings(max_examples=500)
def test_addresses_answer_as_the_email_packages_parser_does(header: str) -> None:
    expected = tuple(addr.lower() for _, addr in getaddresses([header]) if addr)
    assert addresses(header) == expected


@given(st.text(_ATEXT + ' <>@.,"():;\\', max_size=30))
@settings(max_examples=500)
def test_addresses_of_any_text_are_some_of_the_parsers(header: str) -> None:
    # Never an address the email package's parser does not see (in its canonical form); fewer
    # where a display name holds what it reads as one.
    expected = {canonical(addr) for _, addr in getaddresses([header]) if addr}
    assert set(addresses(header)) <= expected
