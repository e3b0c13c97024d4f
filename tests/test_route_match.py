"""Route matching on classification and content: the message facts an event carries, the
``verdict`` / ``category`` / ``auto_replyable`` / ``has_attachments`` / ``subject`` / ``not`` keys
over absent, wrong-typed and present fields, the key paths ``check`` names, what ``route-test``
prints, and a spam/agent split through a running bridge."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.config import RouteConfig, RouteMatch, build_config, describe, load_config
from bridge.errors import ConfigError
from bridge.events import NO_FACTS, Event, MessageFacts, Origin, parse_event
from bridge.routing import UNROUTED_HINTS, Miss, Router, compile_match
from bridge.simulator import Simulator
from bridge.sinks import SINK_TYPES
from tests.conftest import (
    WEBHOOK_SECRET,
    bridge_config_dict,
    make_config,
    read_lines,
    running_bridge,
    wait_until,
    write_config,
)

ABSENT = object()
"""In a message: leave the field out."""


def mail(event_id: str = "evt_1", **fields: object) -> Event:
    """A ``message.received`` event whose message holds ``fields`` (``ABSENT`` ones left out)."""
    message = {"from": "jane@x.com", "to": "support@openmail.sh"}
    message |= {k: v for k, v in fields.items() if v is not ABSENT}
    body = {
        "event": "message.received",
        "event_id": event_id,
        "inbox_id": "inb_a",
        "thread_id": "thr_1",
        "message": message,
    }
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


def lifecycle() -> Event:
    body = {"event": "inbox.suspended", "event_id": "evt_life", "inbox_id": "inb_a"}
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


def router(**match: Any) -> Router:
    return Router([RouteConfig(name="r", sinks=("s",), match=RouteMatch(**match))])


# --- The facts parsed off the message ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "facts"),
    [
        ({}, MessageFacts()),
        (
            {"verdict": "spam", "category": "personal", "auto_replyable": False,
             "attachments": [{"filename": "a.pdf"}], "subject": "Hi"},
            MessageFacts("spam", "personal", False, True, "Hi"),
        ),
        ({"auto_replyable": True, "attachments": []}, MessageFacts(None, None, True, False, None)),
        # Wrong types are unknown, never coerced: "false", 0 and null are not an explicit false.
        ({"auto_replyable": "false"}, MessageFacts()),
        ({"auto_replyable": 0}, MessageFacts()),
        ({"auto_replyable": None}, MessageFacts()),
        ({"verdict": ["spam"], "category": 3, "subject": {"text": "x"}}, MessageFacts()),
        ({"verdict": None, "category": None, "subject": None}, MessageFacts()),
        # An attachment list that is not a list is unknown, whatever it holds.
        ({"attachments": {"filename": "a.pdf"}}, MessageFacts()),
        ({"attachments": "a.pdf"}, MessageFacts()),
        ({"attachments": 2}, MessageFacts()),
        ({"attachments": None}, MessageFacts()),
        ({"verdict": "", "subject": ""}, MessageFacts(verdict="", subject="")),
    ],
)  # fmt: skip
def test_message_facts_take_only_well_typed_fields(
    fields: dict[str, object], facts: MessageFacts
) -> None:
    assert mail(**fields).facts == facts


@pytest.mark.parametrize("message", [None, "a string", ["a", "list"], 42])
def test_an_event_without_a_message_object_has_no_facts(message: object) -> None:
    body = {"event": "message.received", "event_id": "evt_1", "message": message}
    assert parse_event(json.dumps(body).encode(), Origin.WEBHOOK).facts is NO_FACTS
    assert lifecycle().facts is NO_FACTS


def test_an_event_built_directly_has_no_facts() -> None:
    event = Event(
        event_id="evt_1",
        type="message.received",
        inbox_id="inb_a",
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBHOOK,
        received_at=time.time(),
        raw=b"{}",
    )
    assert event.facts is NO_FACTS
    assert router(verdict=("spam",))(event) == ()
    assert router(not_=RouteMatch(verdict=("spam",)))(event) == ("s",)


# --- Payloads x matches ------------------------------------------------------------------------

SPAM = RouteMatch(verdict=("spam", "malicious"))

CASES: list[tuple[str, dict[str, Any], dict[str, object], bool]] = [
    # verdict: present, other case, another value, absent, wrong types
    ("verdict listed", {"verdict": ("spam", "malicious")}, {"verdict": "malicious"}, True),
    ("verdict case", {"verdict": ("spam",)}, {"verdict": "SPAM"}, True),
    ("verdict other", {"verdict": ("spam",)}, {"verdict": "clean"}, False),
    ("verdict absent", {"verdict": ("spam",)}, {}, False),
    ("verdict null", {"verdict": ("spam",)}, {"verdict": None}, False),
    ("verdict list", {"verdict": ("spam",)}, {"verdict": ["spam"]}, False),
    ("verdict number", {"verdict": ("1",)}, {"verdict": 1}, False),
    # not: the complement, so unknown passes
    ("not verdict absent", {"not_": SPAM}, {}, True),
    ("not verdict wrong type", {"not_": SPAM}, {"verdict": ["spam"]}, True),
    ("not verdict clean", {"not_": SPAM}, {"verdict": "clean"}, True),
    ("not verdict spam", {"not_": SPAM}, {"verdict": "spam"}, False),
    ("not verdict malicious", {"not_": SPAM}, {"verdict": "Malicious"}, False),
    # category
    ("category listed", {"category": ("personal", "work")}, {"category": "work"}, True),
    ("category other", {"category": ("personal",)}, {"category": "promotions"}, False),
    ("category absent", {"category": ("personal",)}, {}, False),
    ("category wrong type", {"category": ("personal",)}, {"category": {"a": 1}}, False),
    # auto_replyable: an explicit boolean only
    ("auto false", {"auto_replyable": False}, {"auto_replyable": False}, True),
    ("auto false vs true", {"auto_replyable": False}, {"auto_replyable": True}, False),
    ("auto false absent", {"auto_replyable": False}, {}, False),
    ("auto false string", {"auto_replyable": False}, {"auto_replyable": "false"}, False),
    ("auto false zero", {"auto_replyable": False}, {"auto_replyable": 0}, False),
    ("auto true", {"auto_replyable": True}, {"auto_replyable": True}, True),
    ("auto true one", {"auto_replyable": True}, {"auto_replyable": 1}, False),
    ("not auto false, absent", {"not_": RouteMatch(auto_replyable=False)}, {}, True),
    ("not auto false, false", {"not_": RouteMatch(auto_replyable=False)},
     {"auto_replyable": False}, False),
    # has_attachments: a list, empty or not; anything else is unknown
    ("attachments yes", {"has_attachments": True}, {"attachments": [{"url": "u"}]}, True),
    ("attachments yes, empty", {"has_attachments": True}, {"attachments": []}, False),
    ("attachments no, empty", {"has_attachments": False}, {"attachments": []}, True),
    ("attachments no, some", {"has_attachments": False}, {"attachments": [{}]}, False),
    ("attachments yes, absent", {"has_attachments": True}, {}, False),
    ("attachments no, absent", {"has_attachments": False}, {}, False),
    ("attachments yes, a map", {"has_attachments": True}, {"attachments": {"0": {}}}, False),
    ("attachments no, a map", {"has_attachments": False}, {"attachments": {}}, False),
    ("attachments no, a string", {"has_attachments": False}, {"attachments": ""}, False),
    ("not attachments, a map", {"not_": RouteMatch(has_attachments=True)},
     {"attachments": {"0": {}}}, True),
    # subject: globs over the whole subject, case-insensitive
    ("subject glob", {"subject": ("*invoice*",)}, {"subject": "Your INVOICE #42"}, True),
    ("subject upper glob", {"subject": ("RE: *",)}, {"subject": "re: hello"}, True),
    ("subject whole", {"subject": ("invoice",)}, {"subject": "invoice 2"}, False),
    ("subject ?", {"subject": ("order ?",)}, {"subject": "Order 7"}, True),
    ("subject class", {"subject": ("[ab]ug*",)}, {"subject": "Bug report"}, True),
    ("subject literal dot", {"subject": ("v1.2",)}, {"subject": "v1x2"}, False),
    ("subject any of", {"subject": ("*refund*", "*invoice*")}, {"subject": "invoice"}, True),
    ("subject across lines", {"subject": ("*invoice*",)}, {"subject": "a\ninvoice\nb"}, True),
    ("subject absent", {"subject": ("*",)}, {}, False),
    ("subject wrong type", {"subject": ("*",)}, {"subject": 42}, False),
    ("subject empty", {"subject": ("*",)}, {"subject": ""}, True),
    # nested not and several keys
    ("not not spam", {"not_": RouteMatch(not_=SPAM)}, {"verdict": "spam"}, True),
    ("not not absent", {"not_": RouteMatch(not_=SPAM)}, {}, False),
    ("not of two keys, both", {"not_": RouteMatch(verdict=("spam",), category=("promo",))},
     {"verdict": "spam", "category": "promo"}, False),
    ("not of two keys, one", {"not_": RouteMatch(verdict=("spam",), category=("promo",))},
     {"verdict": "spam", "category": "personal"}, True),
    ("keys and not", {"event_types": ("message.received",), "not_": SPAM}, {}, True),
    ("keys and not, spam", {"event_types": ("message.received",), "not_": SPAM},
     {"verdict": "spam"}, False),
    ("keys and not, other type", {"event_types": ("message.sent",), "not_": SPAM}, {}, False),
    ("every key", {"verdict": ("clean",), "category": ("work",), "auto_replyable": True,
                   "has_attachments": True, "subject": ("*q3*",)},
     {"verdict": "clean", "category": "work", "auto_replyable": True, "attachments": [{}],
      "subject": "Q3 numbers"}, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("match", "fields", "holds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_match_table(match: dict[str, Any], fields: dict[str, object], holds: bool) -> None:
    r = router(**match)
    event = mail(**fields)
    assert r(event) == (("s",) if holds else ())
    # What route-test shows agrees with what routing does.
    assert r.routes[0].decide(event).holds is holds


@pytest.mark.parametrize(
    ("match", "holds"),
    [
        ({"verdict": ("spam",)}, False),
        ({"category": ("personal",)}, False),
        ({"auto_replyable": False}, False),
        ({"has_attachments": False}, False),
        ({"subject": ("*",)}, False),
        # Unknown everywhere: a lifecycle event passes not:, as any unclassified event does.
        ({"not_": SPAM}, True),
        ({"event_types": ("message.received",), "not_": SPAM}, False),
    ],
)
def test_lifecycle_events_have_no_message_fields(match: dict[str, Any], holds: bool) -> None:
    assert router(**match)(lifecycle()) == (("s",) if holds else ())


def test_agent_and_quarantine_split_is_a_partition() -> None:
    routes = Router(
        [
            RouteConfig(name="agent", sinks=("agent",), match=RouteMatch(not_=SPAM)),
            RouteConfig(name="spam", sinks=("quarantine",), match=SPAM),
        ]
    )
    verdicts: list[object] = ["spam", "malicious", "clean", None, ["spam"], 5, "SPAM", ABSENT]
    for verdict in verdicts:
        sinks = routes(mail(verdict=verdict))
        assert len(sinks) == 1, verdict
        spam = isinstance(verdict, str) and verdict.lower() in ("spam", "malicious")
        assert sinks == (("quarantine",) if spam else ("agent",)), verdict


# --- Why a route did not match --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "fields", "miss"),
    [
        ({"verdict": ("spam",)}, {}, Miss.VERDICT),
        ({"category": ("work",)}, {"category": "personal"}, Miss.CATEGORY),
        ({"auto_replyable": False}, {"auto_replyable": "no"}, Miss.AUTO_REPLYABLE),
        ({"has_attachments": True}, {"attachments": "x"}, Miss.HAS_ATTACHMENTS),
        ({"subject": ("*urgent*",)}, {"subject": "hello"}, Miss.SUBJECT),
        ({"not_": SPAM}, {"verdict": "spam"}, Miss.NOT),
        # Keys are checked in Miss order: the first that fails is named.
        ({"inbox_ids": ("inb_b",), "verdict": ("spam",)}, {}, Miss.INBOX),
        ({"verdict": ("spam",), "subject": ("x",)}, {"verdict": "clean"}, Miss.VERDICT),
        ({"subject": ("x",), "not_": SPAM}, {"verdict": "spam"}, Miss.SUBJECT),
    ],
)
def test_miss_names_the_new_keys_in_check_order(
    match: dict[str, Any], fields: dict[str, object], miss: Miss
) -> None:
    r = router(**match)
    event = mail(**fields)
    assert r.routes[0].miss(event) is miss
    assert r.why_unrouted(event) is miss
    assert miss.name.lower() in UNROUTED_HINTS[miss].replace("match.from", "sender")


def test_every_miss_has_a_hint_naming_its_key() -> None:
    assert set(UNROUTED_HINTS) == set(Miss)
    for miss, key in [
        (Miss.VERDICT, "match.verdict"),
        (Miss.CATEGORY, "match.category"),
        (Miss.AUTO_REPLYABLE, "match.auto_replyable"),
        (Miss.HAS_ATTACHMENTS, "match.has_attachments"),
        (Miss.SUBJECT, "match.subject"),
        (Miss.NOT, "match.not"),
    ]:
        assert key in UNROUTED_HINTS[miss]


def test_keys_are_checked_in_miss_order() -> None:
    every = RouteMatch(
        inbox_ids=("inb_a",), event_types=("message.received",), senders=("*",),
        recipients=("*",), verdict=("clean",), category=("work",), auto_replyable=True,
        has_attachments=True, subject=("*",), not_=SPAM,
    )  # fmt: skip
    checks = compile_match(every).checks
    assert [c.miss for c in checks] == sorted(Miss)[1:]
    assert [c.key for c in checks] == [
        "inbox_ids", "event_types", "from", "to", "verdict", "category", "auto_replyable",
        "has_attachments", "subject", "not",
    ]  # fmt: skip


def test_the_route_that_got_furthest_names_the_miss() -> None:
    routes = Router(
        [
            RouteConfig(name="other", sinks=("s",), match=RouteMatch(inbox_ids=("inb_b",))),
            RouteConfig(name="agent", sinks=("s",), match=RouteMatch(not_=SPAM)),
        ]
    )
    assert routes(mail(verdict="spam")) == ()
    assert routes.why_unrouted(mail(verdict="spam")) is Miss.NOT


@pytest.mark.parametrize(
    ("match", "fields", "holds", "keys"),
    [
        ({"not_": SPAM}, {}, True, ("not.verdict",)),
        ({"not_": SPAM}, {"verdict": "spam"}, False, ("not.verdict",)),
        ({"not_": RouteMatch(not_=SPAM)}, {}, False, ("not.not.verdict",)),
        (
            {"not_": RouteMatch(verdict=("spam",), category=("promo",))},
            {"verdict": "spam", "category": "promo"},
            False,
            ("not.verdict", "not.category"),
        ),
        (
            {"not_": RouteMatch(verdict=("spam",), category=("promo",))},
            {"verdict": "spam"},
            True,
            ("not.category",),
        ),
        (
            {"event_types": ("message.received",), "subject": ("*",), "not_": SPAM},
            {"subject": "x"},
            True,
            ("event_types", "subject", "not.verdict"),
        ),
        ({"has_attachments": True, "not_": SPAM}, {}, False, ("has_attachments",)),
        ({}, {}, True, ()),
    ],
)
def test_decision_names_the_deciding_keys(
    match: dict[str, Any], fields: dict[str, object], holds: bool, keys: tuple[str, ...]
) -> None:
    decision = router(**match).routes[0].decide(mail(**fields))
    assert (decision.holds, decision.keys) == (holds, keys)


# --- check: key paths --------------------------------------------------------------------------


def config_dict(tmp_path: Path, *matches: object) -> dict[str, Any]:
    sinks = {"agent": {"type": "stdout"}}
    routes = [{"name": f"r{i}", "match": m, "sinks": ["agent"]} for i, m in enumerate(matches)]
    return bridge_config_dict(tmp_path, sinks=sinks, routes=routes)


def problems(tmp_path: Path, *matches: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(
            config_dict(tmp_path, *matches), sink_types=SINK_TYPES, base_dir=tmp_path, env={}
        )
    return info.value.problems


@pytest.mark.parametrize(
    ("match", "problem"),
    [
        ({"auto_replyable": "maybe"},
         "routes[0] (r0).match.auto_replyable: expected true or false, got str 'maybe'"),
        ({"has_attachments": [1]},
         "routes[0] (r0).match.has_attachments: expected true or false, got a list"),
        ({"verdict": "spam"}, "routes[0] (r0).match.verdict: expected a list, got str 'spam'"),
        ({"category": {"a": 1}}, "routes[0] (r0).match.category: expected a list, got a mapping"),
        ({"subject": ["ok", None]},
         "routes[0] (r0).match.subject[1]: expected a string, got nothing (null)"),
        ({"not": {"verdict": "spam"}},
         "routes[0] (r0).match.not.verdict: expected a list, got str 'spam'"),
        ({"not": {"verdit": ["spam"]}},
         "routes[0] (r0).match.not.verdit: unknown key (did you mean 'verdict'?)"),
        ({"not": ["spam"]}, "routes[0] (r0).match.not: expected a mapping, got a list"),
        ({"not": "spam"}, "routes[0] (r0).match.not: expected a mapping, got str 'spam'"),
        ({"not": {"not": {"auto_replyable": 2}}},
         "routes[0] (r0).match.not.not.auto_replyable: expected true or false, got int 2"),
        ({"Not": {"verdict": ["spam"]}},
         "routes[0] (r0).match.Not: unknown key (did you mean 'not'?)"),
    ],
)  # fmt: skip
def test_bad_match_values_are_named_by_key_path(
    tmp_path: Path, match: dict[str, Any], problem: str
) -> None:
    assert problem in problems(tmp_path, match)


@pytest.mark.parametrize(
    ("match", "path"),
    [
        ({"not": {}}, "routes[0] (r0).match.not"),
        ({"not": {"not": {}}}, "routes[0] (r0).match.not.not"),
    ],
)
def test_an_empty_not_is_refused(tmp_path: Path, match: dict[str, Any], path: str) -> None:
    [problem] = problems(tmp_path, match)
    assert problem.startswith(f"{path}: is empty")
    assert "would match none" in problem


def test_every_bad_match_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {"auto_replyable": "maybe", "not": {"has_attachments": "some"}},
        {"verdict": [["nested"]]},
    )
    assert found == [
        "routes[0] (r0).match.auto_replyable: expected true or false, got str 'maybe'",
        "routes[0] (r0).match.not.has_attachments: expected true or false, got str 'some'",
        "routes[1] (r1).match.verdict[0]: expected a string, got a list",
    ]


def test_valid_match_keys_reach_the_router_and_check_shows_them(tmp_path: Path) -> None:
    match = {
        "event_types": ["message.received"],
        "subject": ["*Invoice*"],
        "has_attachments": True,
        "not": {"verdict": ["spam", "malicious"], "not": {"auto_replyable": "yes"}},
    }
    config = make_config(tmp_path, sinks={"agent": {"type": "stdout"}},
                         routes=[{"name": "r", "match": match, "sinks": ["agent"]}])  # fmt: skip
    assert config.routes[0].match == RouteMatch(
        event_types=("message.received",),
        subject=("*Invoice*",),
        has_attachments=True,
        not_=RouteMatch(verdict=("spam", "malicious"), not_=RouteMatch(auto_replyable=True)),
    )
    shown: Any = describe(config)
    assert shown["routes"][0]["match"]["not"]["verdict"] == ["spam", "malicious"]
    assert shown["routes"][0]["match"]["not"]["not"]["auto_replyable"] is True
    r = Router(config.routes)
    invoice = {"subject": "your invoice", "attachments": [{}]}
    # spam is excluded unless it is explicitly auto-replyable: not (spam and not replyable)
    assert r(mail(**invoice)) == ("agent",)
    assert r(mail(**invoice, verdict="spam")) == ()
    assert r(mail(**invoice, verdict="spam", auto_replyable=True)) == ("agent",)
    assert r(mail(**{**invoice, "attachments": []})) == ()


# --- route-test ----------------------------------------------------------------------------------

SPLIT_ROUTES: list[dict[str, Any]] = [
    {"name": "agent", "sinks": ["agent"],
     "match": {"event_types": ["message.received"], "not": {"verdict": ["spam", "malicious"]}}},
    {"name": "spam", "match": {"verdict": ["spam", "malicious"]}, "sinks": ["quarantine"]},
    {"name": "invoices", "match": {"subject": ["*invoice*"], "has_attachments": True},
     "sinks": ["quarantine"]},
    {"name": "do-not-answer", "match": {"not": {"not": {"auto_replyable": False}}},
     "sinks": ["quarantine"]},
    {"name": "everything", "sinks": ["audit"]},
]  # fmt: skip


def split_config(tmp_path: Path, sim: Simulator | None = None) -> Path:
    sinks = {
        name: {"type": "file", "path": str(tmp_path / f"{name}.jsonl")}
        for name in ("agent", "quarantine", "audit")
    }
    data = bridge_config_dict(tmp_path, sim, sinks=sinks, routes=SPLIT_ROUTES)
    return write_config(tmp_path / "config.yaml", data)


def route_test(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, message: dict[str, object], *flags: str
) -> str:
    body = {"event": "message.received", "event_id": "evt_rt", "inbox_id": "inb_a",
            "thread_id": "thr_1", "message": {"from": "a@x.com", **message}}  # fmt: skip
    event = tmp_path / "event.json"
    event.write_text(json.dumps(body))
    capsys.readouterr()
    assert main(["route-test", "-c", str(split_config(tmp_path)), *flags, str(event)]) == 0
    return capsys.readouterr().out


def test_route_test_prints_the_deciding_key_per_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = route_test(capsys, tmp_path, {"verdict": "spam", "subject": "Invoice", "attachments": {}})
    assert out.splitlines() == [
        "event evt_rt (message.received, inbox inb_a)",
        "  route agent: no match (not.verdict)",
        "  route spam: match (verdict)",
        "  route invoices: no match (has_attachments)",
        "  route do-not-answer: no match (not.not.auto_replyable)",
        "  route everything: match (no match keys)",
        "  sinks: quarantine, audit",
    ]
    out = route_test(capsys, tmp_path, {"auto_replyable": False})
    assert out.splitlines()[1:-1] == [
        "  route agent: match (event_types, not.verdict)",
        "  route spam: no match (verdict)",
        "  route invoices: no match (has_attachments)",
        "  route do-not-answer: match (not.not.auto_replyable)",
        "  route everything: match (no match keys)",
    ]


def test_route_test_json_lists_decisions_beside_routes_and_sinks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = route_test(capsys, tmp_path, {"subject": "INVOICE", "attachments": [{}]}, "--json")
    assert json.loads(out) == {
        "event_id": "evt_rt",
        "routes": ["agent", "invoices", "everything"],
        "sinks": ["agent", "quarantine", "audit"],
        "decisions": [
            {"route": "agent", "matched": True, "keys": ["event_types", "not.verdict"]},
            {"route": "spam", "matched": False, "keys": ["verdict"]},
            {"route": "invoices", "matched": True, "keys": ["has_attachments", "subject"]},
            {"route": "do-not-answer", "matched": False, "keys": ["not.not.auto_replyable"]},
            {"route": "everything", "matched": True, "keys": []},
        ],
    }


def test_route_test_refuses_a_bad_match_with_its_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = config_dict(tmp_path, {"not": {"auto_replyable": "perhaps"}})
    config = write_config(tmp_path / "bad.yaml", data)
    capsys.readouterr()
    assert main(["route-test", "-c", str(config), "-"]) == 2
    err = capsys.readouterr().err
    assert "routes[0] (r0).match.not.auto_replyable: expected true or false" in err


# --- Through a running bridge ---------------------------------------------------------------------

PLAIN: dict[str, object] = {"subject": "Hello", "attachments": []}
"""Fixed content, so the simulator's random subjects and attachments decide nothing."""
SENT: dict[str, dict[str, object]] = {
    "unclassified": {},
    "spam": {"verdict": "spam"},
    "malicious": {"verdict": "malicious", "subject": "invoice", "attachments": [{"url": "u"}]},
    "clean": {"verdict": "clean", "category": "personal"},
    "wrong-typed": {"verdict": ["spam"], "auto_replyable": "false", "attachments": "x"},
    "out-of-office": {"auto_replyable": False},
}
LANDS: dict[str, set[str]] = {
    "unclassified": {"agent", "audit"},
    "spam": {"quarantine", "audit"},
    "malicious": {"quarantine", "audit"},
    "clean": {"agent", "audit"},
    "wrong-typed": {"agent", "audit"},
    "out-of-office": {"agent", "quarantine", "audit"},
}


@pytest.mark.parametrize("transport", ["websocket", "webhook"])
async def test_spam_is_quarantined_and_everything_else_reaches_the_agent(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str], transport: str
) -> None:
    """The same facts are read off either transport; route-test agrees on each payload sent."""
    config_path = split_config(tmp_path, sim if transport == "websocket" else None)
    ids: dict[str, str] = {}
    async with running_bridge(load_config(config_path, sink_types=SINK_TYPES)) as supervisor:
        if transport == "websocket":
            await wait_until(lambda: any(c.subscribed for c in sim.connections))
        else:
            port = supervisor.webhook.port
            sim.set_webhook(f"http://127.0.0.1:{port}/webhooks", WEBHOOK_SECRET)
        for name, fields in SENT.items():
            ids[name] = await sim.inject(message={**PLAIN, **fields})

        def landed(sink: str) -> set[str]:
            return {line["event_id"] for line in read_lines(tmp_path / f"{sink}.jsonl")}

        wanted = sum(len(sinks) for sinks in LANDS.values())
        await wait_until(lambda: sum(len(landed(s)) for s in ("agent", "quarantine", "audit"))
                         >= wanted)  # fmt: skip
    for sink in ("agent", "quarantine", "audit"):
        assert landed(sink) == {ids[n] for n, sinks in LANDS.items() if sink in sinks}, sink
    assert {d.channel for d in sim.deliveries} == {transport}

    by_id = {str(e["event_id"]): e for e in sim.events}
    for name, event_id in ids.items():
        payload = tmp_path / f"{name}.json"
        payload.write_text(json.dumps(by_id[event_id]))
        capsys.readouterr()
        assert main(["route-test", "-c", str(config_path), "--json", str(payload)]) == 0
        assert set(json.loads(capsys.readouterr().out)["sinks"]) == LANDS[name], name
