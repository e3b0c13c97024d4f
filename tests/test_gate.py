"""The gate in front of an agent (bridge/gate.py): classification routes, the loop and auto-reply
guard, and per-sender rate limits, through a real bridge: signed webhook POSTs on 127.0.0.1 in,
a real HTTP receiver (the agent) and file sinks out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    AGENT_SECRET,
    Receiver,
    bridge_config_dict,
    events_named,
    make_config,
    read_lines,
    run_cli,
    running_bridge,
    signed,
    wait_until,
    webhook_of,
    write_config,
)
from structlog.testing import capture_logs

import bridge.delivery
from bridge.config import Config, build_config, load_config
from bridge.errors import ConfigError
from bridge.events import Origin, parse_event
from bridge.gate import Gate, OwnAddresses
from bridge.plan import Action, Note, Reason
from bridge.sinks import SINK_TYPES
from bridge.supervisor import Supervisor

AGENT = "agent@example.com"


def email(
    n: int, *, sender: str = "jane@example.org", thread: str | None = None, **message: Any
) -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": f"evt_{n}",
            "inbox_id": "inb_agent",
            "thread_id": thread or f"thr_{n}",
            "message": {"id": f"msg_{n}", "from": sender, "to": AGENT, "subject": f"hi {n}"}
            | message,
        }
    ).encode()


def agent_config(tmp_path: Path, receiver: Receiver, **route: Any) -> dict[str, Any]:
    """The issue's shape: the agent gets all but spam, guarded, quarantine as a file."""
    agent_route = {
        "name": "agent",
        "match": {"not": {"verdict": ["spam", "malicious"]}},
        "guard": {"own_addresses": [AGENT], "quarantine": "quarantine"},
        "sinks": ["agent"],
    } | route
    return bridge_config_dict(
        tmp_path,
        sinks={
            "agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET},
            "quarantine": {"type": "file", "path": str(tmp_path / "quarantine.jsonl")},
        },
        routes=[
            agent_route,
            {"name": "spam", "match": {"verdict": ["spam", "malicious"]}, "sinks": ["quarantine"]},
        ],
    )


async def post(sup: Supervisor, bodies: Sequence[bytes]) -> None:
    url = f"http://127.0.0.1:{webhook_of(sup).port}/webhooks"
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(url, data=body, headers=signed(body)) as resp:
                assert resp.status == 200, await resp.text()


def quarantined(tmp_path: Path) -> list[str]:
    return [line["event_id"] for line in read_lines(tmp_path / "quarantine.jsonl")]


def counter(sup: Supervisor, name: str, **labels: str) -> float:
    value = sup.metrics.registry.get_sample_value(f"openmail_bridge_{name}_total", labels)
    return value or 0.0


def build(tmp_path: Path, data: dict[str, Any]) -> Config:
    path = write_config(tmp_path / "bridge.yaml", data)
    return load_config(path, sink_types=SINK_TYPES)


async def test_spam_reaches_the_quarantine_and_not_the_agent(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = build(tmp_path, agent_config(tmp_path, receiver))
    async with running_bridge(config) as sup:
        await post(
            sup,
            [
                email(1, verdict="spam"),
                email(2, verdict="malicious"),
                email(3),
                email(4, verdict="clean"),
            ],
        )
        await wait_until(lambda: sorted(receiver.accepted_ids()) == ["evt_3", "evt_4"])
        await wait_until(lambda: sorted(quarantined(tmp_path)) == ["evt_1", "evt_2"])
    assert sorted(receiver.accepted_ids()) == ["evt_3", "evt_4"]  # unclassified mail passes


async def test_a_loop_and_an_out_of_office_are_quarantined_with_their_reasons(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = build(tmp_path, agent_config(tmp_path, receiver))
    async with running_bridge(config) as sup:
        with capture_logs() as logs:
            await post(
                sup,
                [
                    email(1, sender=f"Agent <{AGENT.upper()}>"),
                    email(2, auto_replyable=False),
                    email(3, sender="MAILER-DAEMON@mx.example.org"),
                    email(4, auto_replyable=True),
                ],
            )
            await wait_until(lambda: sorted(quarantined(tmp_path)) == ["evt_1", "evt_2", "evt_3"])
            await wait_until(lambda: receiver.accepted_ids() == ["evt_4"])
        for reason in ("loop", "auto_replyable_false", "mailer_daemon"):
            assert counter(sup, "events_guarded", route="agent", reason=reason) == 1
        guarded = events_named(logs, "event.guarded")
        assert sorted(e["event_id"] for e in guarded) == ["evt_1", "evt_2", "evt_3"]
        status = await sup.status()
        assert "guarded" in json.dumps(status)


async def test_without_a_quarantine_guarded_mail_is_dropped_and_recorded(
    tmp_path: Path, receiver: Receiver
) -> None:
    data = agent_config(tmp_path, receiver, guard={"own_addresses": [AGENT]})
    config_file = write_config(tmp_path / "bridge.yaml", data)
    config = build(tmp_path, data)
    async with running_bridge(config) as sup:
        await post(sup, [email(1, sender=AGENT), email(2)])
        await wait_until(lambda: receiver.accepted_ids() == ["evt_2"])
        assert counter(sup, "events_guarded", route="agent", reason="loop") == 1
        code, out, err = await run_cli("events", "list", "--json", "-c", str(config_file))
        assert code == 0, err
        listed = {item["event_id"]: item for item in json.loads(out)}
        assert listed["evt_1"]["notes"] == [
            {"route": "agent", "reason": "loop", "action": "dropped"}
        ]
    assert quarantined(tmp_path) == []


async def test_auto_replyable_deliver_marks_the_mail_instead(
    tmp_path: Path, receiver: Receiver
) -> None:
    guard = {"own_addresses": [AGENT], "quarantine": "quarantine", "auto_replyable": "deliver"}
    config = build(tmp_path, agent_config(tmp_path, receiver, guard=guard))
    async with running_bridge(config) as sup:
        await post(sup, [email(1, auto_replyable=False), email(2)])
        await wait_until(lambda: sorted(receiver.accepted_ids()) == ["evt_1", "evt_2"])
    marks = {
        r.json["event_id"]: r.headers.get("X-OpenMail-Bridge-No-Reply") for r in receiver.accepted
    }
    assert marks == {"evt_1": "true", "evt_2": None}
    assert quarantined(tmp_path) == []


async def test_guard_false_delivers_a_loop(tmp_path: Path, receiver: Receiver) -> None:
    config = build(tmp_path, agent_config(tmp_path, receiver, guard=False))
    async with running_bridge(config) as sup:
        await post(sup, [email(1, sender="postmaster@example.org")])
        await wait_until(lambda: receiver.accepted_ids() == ["evt_1"])


@pytest.mark.parametrize("over", ["quarantine", "hold"])
async def test_one_sender_over_its_limit(tmp_path: Path, receiver: Receiver, over: str) -> None:
    limits = {"per_sender": "20/10m", "over": over}
    config = build(tmp_path, agent_config(tmp_path, receiver, limits=limits))
    async with running_bridge(config) as sup:
        await post(sup, [email(n, sender="storm@example.org") for n in range(100)])
        await wait_until(lambda: len(receiver.accepted_ids()) == 20)
        action = "quarantined" if over == "quarantine" else "held"
        labels = {"route": "agent", "limit": "per_sender", "action": action}
        assert counter(sup, "events_limited", **labels) == 80
        if over == "quarantine":
            await wait_until(lambda: len(quarantined(tmp_path)) == 80)
        else:
            assert sup.store is not None
            counts = await sup.store.sink_counts()
            assert counts["agent"].pending == 80  # held: delivered as the window admits them
        assert receiver.accepted_ids() == [f"evt_{n}" for n in range(20)]


def test_the_guard_covers_http_sinks_and_routing_stays_a_union(tmp_path: Path) -> None:
    data = bridge_config_dict(
        tmp_path,
        sinks={
            "agent": {"type": "http", "url": "http://127.0.0.1:9/hook"},
            "log": {"type": "file", "path": str(tmp_path / "all.jsonl")},
        },
        routes=[
            {"name": "guarded", "sinks": ["agent", "log"]},
            {
                "name": "trusted",
                "match": {"from": ["boss@example.org"]},
                "guard": False,
                "sinks": ["agent"],
            },
        ],
    )
    config = make_config(tmp_path, **{k: data[k] for k in ("sinks", "routes")})
    own = OwnAddresses()
    gate = Gate(config.routes, config.sinks, own)
    bounce = parse_event(email(1, sender="postmaster@example.org"), Origin.WEBHOOK)
    plan = gate.plan(bounce)
    assert plan.sinks == ("log",)  # the file still gets everything
    assert plan.notes == (Note("guarded", Reason.BOUNCE, Action.DROPPED),)
    # The agent's own address is learned from the `to` of mail to its inboxes.
    assert AGENT in own
    loop = parse_event(email(2, sender=AGENT), Origin.WEBHOOK)
    assert gate.plan(loop).notes == (Note("guarded", Reason.LOOP, Action.DROPPED),)
    # Another matching route without a guard lets it through to the same sink.
    boss = parse_event(email(3, sender=AGENT, **{"from": "boss@example.org"}), Origin.WEBHOOK)
    assert set(gate.plan(boss).sinks) == {"agent", "log"}


def test_learned_addresses_are_bounded() -> None:
    own = OwnAddresses()
    for n in range(100_000):
        body = email(n)
        event = parse_event(
            body.replace(AGENT.encode(), f"a{n}@example.com".encode()), Origin.WEBHOOK
        )
        own.learn(event)
    assert len(own.learned) == 10_000


async def test_learned_addresses_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    config = build(tmp_path, agent_config(tmp_path, receiver, guard={"quarantine": "quarantine"}))
    async with running_bridge(config) as sup:
        await post(sup, [email(1)])
        await wait_until(lambda: receiver.accepted_ids() == ["evt_1"])
    async with running_bridge(config) as sup:
        await post(sup, [email(2, sender=AGENT)])  # the address was only ever learned
        await wait_until(lambda: quarantined(tmp_path) == ["evt_2"])
        assert counter(sup, "events_guarded", route="agent", reason="loop") == 1


def test_check_names_bad_guard_and_limit_keys(tmp_path: Path) -> None:
    data = bridge_config_dict(
        tmp_path,
        sinks={"agent": {"type": "http", "url": "http://127.0.0.1:9/hook"}},
        routes=[
            {
                "name": "agent",
                "sinks": ["agent"],
                "guard": {"quarantine": "nowhere", "auto_replyable": "maybe"},
                "limits": {"per_sender": "twenty", "over": "later"},
            },
            {
                "name": "b",
                "sinks": ["agent"],
                "limits": {"per_thread": "5/1m", "over": "quarantine"},
            },
        ],
    )
    with pytest.raises(ConfigError) as caught:
        build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    text = str(caught.value)
    assert "routes[0] (agent).guard.auto_replyable" in text
    assert "routes[0] (agent).limits.per_sender" in text
    assert "routes[0] (agent).limits.over" in text
    assert "routes[1] (b).limits.over: quarantine needs a quarantine sink" in text


def test_only_a_single_to_address_is_learned() -> None:
    own = OwnAddresses()
    body = email(1).replace(AGENT.encode(), b"agent@example.com, boss@example.org")
    own.learn(parse_event(body, Origin.WEBHOOK))
    assert own.learned == set()


def test_a_stranger_naming_a_real_sender_spends_a_quota_of_their_own(tmp_path: Path) -> None:
    data = bridge_config_dict(
        tmp_path,
        sinks={"agent": {"type": "http", "url": "http://127.0.0.1:9/hook"}},
        routes=[{"name": "agent", "sinks": ["agent"], "limits": {"per_sender": "3/10m"}}],
    )
    config = make_config(tmp_path, **{k: data[k] for k in ("sinks", "routes")})
    gate = Gate(config.routes, config.sinks, OwnAddresses())

    def sender_key(sender: str) -> str:
        (limited,) = gate.plan(parse_event(email(1, sender=sender), Origin.WEBHOOK)).limited
        (key,) = [key for reason, key, _ in limited.keys if reason is Reason.PER_SENDER]
        return key

    ceo = sender_key("Jane Doe <ceo@mycorp.example>")
    assert sender_key("ceo@mycorp.example <attacker@evil.example>") != ceo
    assert sender_key("ceo@mycorp.example, attacker@evil.example") != ceo
    assert sender_key("CEO <CEO@mycorp.example>") == ceo


def test_an_own_address_among_several_authors_is_a_loop(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        sinks={"agent": {"type": "http", "url": "http://127.0.0.1:9/hook"}},
        routes=[{"name": "agent", "sinks": ["agent"]}],
    )
    gate = Gate(config.routes, config.sinks, OwnAddresses([AGENT]))
    both = parse_event(email(1, sender=f"jane@example.org, {AGENT}"), Origin.WEBHOOK)
    assert gate.plan(both).notes == (Note("agent", Reason.LOOP, Action.DROPPED),)


def limited_gate(tmp_path: Path, **guard: Any) -> Gate:
    route: dict[str, Any] = {"name": "agent", "sinks": ["agent", "log"]}
    route |= {"limits": {"per_sender": "3/10m"}, "guard": guard or True}
    config = make_config(
        tmp_path,
        sinks={
            "agent": {"type": "http", "url": "http://127.0.0.1:9/hook"},
            "log": {"type": "file", "path": str(tmp_path / "all.jsonl")},
        },
        routes=[route],
    )
    return Gate(config.routes, config.sinks, OwnAddresses())


def sender_key_of(gate: Gate, sender: str) -> str:
    (limited,) = gate.plan(parse_event(email(1, sender=sender), Origin.WEBHOOK)).limited
    (key,) = [key for reason, key, _ in limited.keys if reason is Reason.PER_SENDER]
    return key


def test_one_set_of_authors_is_one_sender_key_whatever_its_order(tmp_path: Path) -> None:
    gate = limited_gate(tmp_path)
    both = sender_key_of(gate, "jane@example.org, joe@example.org")
    assert sender_key_of(gate, "joe@example.org, Jane <JANE@example.org>") == both
    assert sender_key_of(gate, "joe@example.org, jane@example.org, joe@example.org") == both
    # An empty angle-addr does not hide the address written beside it from the limit.
    assert sender_key_of(gate, "jane@example.org <>") == sender_key_of(gate, "jane@example.org")


@pytest.mark.parametrize(
    "sender",
    [
        "(" * 1200 + "x) <mallory@evil.example>",  # deeper than the email parser goes
        "Mallory",
        "mallory <>",
        ", ".join(f"m{n}@evil.example" for n in range(1000)),  # past what is read
    ],
)
def test_a_sender_that_names_no_readable_address_is_kept_from_the_agent(
    tmp_path: Path, sender: str
) -> None:
    gate = limited_gate(tmp_path)
    plan = gate.plan(parse_event(email(1, sender=sender), Origin.WEBHOOK))
    assert plan.notes == (Note("agent", Reason.UNREADABLE_SENDER, Action.DROPPED),)
    # The archive still gets it, counted under one key for every such sender.
    (limited,) = plan.limited
    assert limited.sinks == ("log",)
    assert sender_key_of(gate, sender) == sender_key_of(gate, "Someone")


@pytest.mark.parametrize(
    ("configured", "sender"),
    [
        (AGENT, '"agent"@example.com'),
        (AGENT, "Agent <agent@example.com.>"),
        ("bot@bücher.example", "bot@xn--bcher-kva.example"),
        ("bot@xn--bcher-kva.example", "Bot <bot@BÜCHER.example>"),
    ],
)
def test_an_own_address_is_known_in_any_form_of_it(
    tmp_path: Path, configured: str, sender: str
) -> None:
    gate = limited_gate(tmp_path, own_addresses=[configured])
    plan = gate.plan(parse_event(email(1, sender=sender), Origin.WEBHOOK))
    assert plan.notes == (Note("agent", Reason.LOOP, Action.DROPPED),)


@pytest.mark.parametrize(
    "bounce", ['"MAILER-DAEMON"@mx.example.org', "MAILER-DAEMON@mx.example <>"]
)
def test_a_bounce_is_known_in_any_form_of_its_sender(tmp_path: Path, bounce: str) -> None:
    plan = limited_gate(tmp_path).plan(parse_event(email(1, sender=bounce), Origin.WEBHOOK))
    assert plan.notes == (Note("agent", Reason.BOUNCE, Action.DROPPED),)


async def test_a_poisoned_from_is_quarantined_and_the_mail_after_it_flows(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Nested comments past the email parser's recursion limit, and an unclosed quote that once
    # took a pattern quadratic time: each answered at once, kept from the agent, recorded.
    poisons = ["(" * 1200 + "x) <mallory@evil.example>", '"' + '\\"' * 3000 + " <m@evil.example>"]
    config = build(tmp_path, agent_config(tmp_path, receiver))
    async with running_bridge(config) as sup:
        await post(sup, [email(1, sender=poisons[0]), email(2), email(3, sender=poisons[1])])
        await post(sup, [email(4)])
        await wait_until(lambda: sorted(receiver.accepted_ids()) == ["evt_2", "evt_4"])
        await wait_until(lambda: sorted(quarantined(tmp_path)) == ["evt_1", "evt_3"])
        assert counter(sup, "events_guarded", route="agent", reason="unreadable_sender") == 2


async def test_one_senders_held_flood_keeps_no_one_elses_mail_waiting(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parked bound scaled down from 100,000: past it, the flood waits in the store.
    monkeypatch.setattr(bridge.delivery, "PARKED", 40)
    data = bridge_config_dict(
        tmp_path,
        sinks={"agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET}},
        routes=[{"name": "agent", "limits": {"per_sender": "2/10m"}, "sinks": ["agent"]}],
    )
    config = build(tmp_path, data)
    async with running_bridge(config) as sup:
        await post(sup, [email(n, sender="mallory@evil.example") for n in range(60)])
        await wait_until(lambda: sup.dispatcher.workers["agent"].parked == 40)
        others = [email(1000 + n, sender=f"user{n}@example.org") for n in range(5)]
        await post(sup, others)
        await wait_until(
            lambda: {f"evt_{1000 + n}" for n in range(5)} <= set(receiver.accepted_ids())
        )
        assert sorted(i for i in receiver.accepted_ids() if int(i[4:]) < 1000) == ["evt_0", "evt_1"]
