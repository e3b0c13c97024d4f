"""``openmail-bridge trigger``: a test event sent by a running bridge straight to one sink, the
routes not asked, counted under source ``test``, followed until delivered or dead. The bridge runs
in-process with real sinks (a file, an HTTP receiver that verifies signatures on its own); the
command runs as a real subprocess against its admin server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    AGENT_SECRET,
    Receiver,
    bridge_config_dict,
    free_port,
    read_lines,
    run_cli,
    running_bridge,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from bench.events import event_body
from bridge.config import build_config
from bridge.events import Origin, parse_event
from bridge.sinks import SINK_TYPES
from bridge.supervisor import Supervisor
from bridge.trigger import EVENT_ID_PREFIX, VIA, new_event

TOKEN_ENV = "OPENMAIL_BRIDGE_ADMIN_TOKEN"
FAST_RETRY = {"initial": "20ms", "max": "50ms"}
# A route the test event (inbox inb_test) never matches: whatever reaches a sink got there by
# the trigger alone.
ELSEWHERE = [{"name": "elsewhere", "match": {"inbox_ids": ["inb_elsewhere"]}, "sinks": ["audit"]}]


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command falls back on this variable; a value from the developer's shell must not leak in.
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def config_dict(tmp_path: Path, receiver: Receiver, **overrides: Any) -> dict[str, Any]:
    """A bridge with a file sink ``audit`` and an HTTP sink ``agent``, routes that send neither
    the test event, and the admin server on a fixed port so the config file alone reaches it."""
    base = {
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "sinks": {
            "audit": {"type": "file", "path": str(tmp_path / "events.jsonl")},
            "agent": {
                "type": "http",
                "url": receiver.url,
                "secret": AGENT_SECRET,
                "retry": FAST_RETRY,
            },
        },
        "routes": ELSEWHERE,
    }
    return bridge_config_dict(tmp_path, **base | overrides)


@pytest.fixture
async def bridge(tmp_path: Path, receiver: Receiver) -> AsyncIterator[tuple[Supervisor, Path]]:
    """The running bridge and the config file it was built from."""
    data = config_dict(tmp_path, receiver)
    path = write_config(tmp_path / "config.yaml", data)
    config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    async with running_bridge(config) as sv:
        yield sv, path


async def metric(sv: Supervisor, name: str, **labels: str) -> float:
    """One sample of the bridge's ``/metrics``, 0 when absent."""
    for family in text_string_to_metric_families((await sv.metrics_text()).decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def event_id_in(stdout: str) -> str:
    ids = [word for word in stdout.split() if word.startswith(EVENT_ID_PREFIX)]
    assert ids, stdout
    return ids[0]


# --- the test event --------------------------------------------------------------------------


def shape(value: object) -> object:
    """The keys of a JSON value, nested, without its values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def test_the_test_event_is_a_documented_message_received() -> None:
    event = new_event(at=1_771_927_500.0)
    assert event.event_id.startswith(EVENT_ID_PREFIX)
    assert len(event.event_id) == len(EVENT_ID_PREFIX) + 32  # a uuid4 in hex
    assert new_event().event_id != new_event().event_id
    assert (event.via, event.origin, event.type) == (VIA, Origin.WEBHOOK, "message.received")
    assert not event.from_own_websocket  # never moves the WebSocket cursor
    body = json.loads(event.raw)
    assert body["occurred_at"] == "2026-02-24T10:05:00.000Z"
    # The benchmark's payload is written from the protocol notes independently of this one.
    reference = json.loads(event_body("x", 1, "2026-02-24T10:05:00.000Z"))
    reference["message"]["attachments"] = []
    assert shape(body) == shape(reference)
    assert parse_event(event.raw, Origin.WEBHOOK).event_id == event.event_id


# --- through a running bridge ----------------------------------------------------------------


async def test_trigger_delivers_to_the_named_sink_only_whatever_the_routes(
    bridge: tuple[Supervisor, Path], receiver: Receiver, tmp_path: Path
) -> None:
    sv, path = bridge
    code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "agent")
    assert code == 0, err
    event_id = event_id_in(out)
    assert f"sent test event {event_id} to sink agent" in out
    assert f"delivered: sink agent accepted {event_id}" in out
    # Re-signed for the agent: the receiver checks the signature with its own secret.
    assert receiver.bad_signatures == 0
    assert [r.json["event_id"] for r in receiver.accepted] == [event_id]
    assert receiver.accepted[0].json["inbox_id"] == "inb_test"
    assert "audit" not in await sv.store.sink_counts()  # no row for the other sink, ever
    assert read_lines(tmp_path / "events.jsonl") == []

    code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "audit")
    assert code == 0, err
    second = event_id_in(out)
    assert [line["event_id"] for line in read_lines(tmp_path / "events.jsonl")] == [second]
    assert [r.json["event_id"] for r in receiver.accepted] == [event_id]

    received = "openmail_bridge_events_received_total"
    assert await metric(sv, received, source="test") == 2
    assert await metric(sv, received, source="webhook") == 0
    assert await metric(sv, "openmail_bridge_events_unrouted_total", source="test") == 0


async def test_an_unknown_sink_exits_2_listing_the_sinks(
    bridge: tuple[Supervisor, Path], receiver: Receiver
) -> None:
    sv, path = bridge
    code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "agnet")
    assert code == 2
    assert "no sink named 'agnet'" in err
    assert "its sinks: audit, agent" in err
    assert out == ""
    assert await metric(sv, "openmail_bridge_events_received_total", source="test") == 0
    assert receiver.received == []


async def test_a_sink_that_keeps_failing_exits_1_with_the_dead_letter(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500, 500]
    retry = FAST_RETRY | {"max_attempts": 3}
    data = config_dict(tmp_path, receiver)
    data["sinks"]["agent"]["retry"] = retry
    path = write_config(tmp_path / "config.yaml", data)
    config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    async with running_bridge(config) as sv:
        code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "agent")
        assert code == 1, err
        event_id = event_id_in(out)
        assert f"dead: sink agent dead-lettered {event_id} after 3 attempts" in out
        assert "500" in out
        assert "dlq list --sink agent" in out
        dead = await sv.store.dlq_list(sink="agent")
        assert [d.delivery.event_id for d in dead] == [event_id]
    assert len(receiver.received) == 3
    assert receiver.accepted == []


async def test_a_delivery_still_retrying_at_the_timeout_exits_1(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.up = False  # answers 503: retried without end (max_attempts 0)
    data = config_dict(tmp_path, receiver)
    path = write_config(tmp_path / "config.yaml", data)
    config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    async with running_bridge(config) as sv:
        code, out, _ = await run_cli(
            "trigger", "-c", str(path), "--sink", "agent", "--timeout", "0.5"
        )
        assert code == 1
        event_id = event_id_in(out)
        assert f"timeout: {event_id} is still pending for sink agent after 0.5s" in out
        assert "failed: HTTP 503 from " in out  # the attempts seen while it waited
        assert (await sv.store.sink_counts())["agent"].pending == 1  # kept, still retried


async def test_a_token_protected_admin_without_a_token_exits_2_naming_the_variable(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config_dict(tmp_path, receiver)
    data["admin"]["token"] = "${TRIGGER_TEST_ADMIN_TOKEN}"
    path = write_config(tmp_path / "config.yaml", data)
    env = {"TRIGGER_TEST_ADMIN_TOKEN": "admin-token-0003"}
    config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env=env)
    monkeypatch.delenv("TRIGGER_TEST_ADMIN_TOKEN", raising=False)
    async with running_bridge(config) as sv:
        code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "agent")
        assert code == 2
        assert "TRIGGER_TEST_ADMIN_TOKEN" in err
        assert "admin-token-0003" not in err + out
        assert receiver.received == []

        monkeypatch.setenv(TOKEN_ENV, "admin-token-0003")
        code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "agent")
        assert code == 0, err
        assert [r.json["event_id"] for r in receiver.accepted] == [event_id_in(out)]
        assert await metric(sv, "openmail_bridge_events_received_total", source="test") == 1


async def test_a_non_loopback_admin_without_a_token_refuses_the_trigger(
    tmp_path: Path, receiver: Receiver
) -> None:
    data = config_dict(tmp_path, receiver)
    data["admin"]["listen"] = f"0.0.0.0:{free_port()}"
    path = write_config(tmp_path / "config.yaml", data)
    config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    async with running_bridge(config):
        code, _, err = await run_cli("trigger", "-c", str(path), "--sink", "agent")
    assert code == 2
    assert "refuses /trigger (403)" in err
    assert receiver.received == []


async def test_the_admin_routes_answer_bad_requests_plainly(
    bridge: tuple[Supervisor, Path],
) -> None:
    sv, _ = bridge
    assert sv.admin is not None
    base = f"http://127.0.0.1:{sv.admin.port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/trigger", data=b"not json") as response:
            assert response.status == 400
            assert "sink" in (await response.json())["error"]
        async with http.post(f"{base}/trigger", json={"sink": "nope"}) as response:
            assert response.status == 404
            assert (await response.json())["sinks"] == ["audit", "agent"]
        async with http.get(f"{base}/trigger/evt_test_unknown") as response:
            assert response.status == 404
        async with http.post(f"{base}/trigger", json={"sink": "audit"}) as response:
            assert response.status == 202
            sent = await response.json()
        async with http.get(f"{base}/trigger/{sent['event_id']}") as response:
            assert response.status == 200
            outcome = await response.json()
    assert outcome["event_id"] == sent["event_id"]
    assert outcome["sink"] == "audit"
    assert outcome["state"] in ("pending", "delivered")


async def test_a_receivers_error_text_reaches_the_terminal_escaped(tmp_path: Path) -> None:
    # What the receiver answered is shown; what it wrote must not drive the terminal.
    hostile = "bad\x1b]52;c;Y3VybCBldmlsIHwgc2gK\x07\r\x1b[2Kfine\u202e"
    receiver = Receiver(answer=lambda _: (400, hostile))
    await receiver.start()
    try:
        data = config_dict(tmp_path, receiver)
        del data["sinks"]["agent"]["secret"]  # this receiver checks no signature
        path = write_config(tmp_path / "config.yaml", data)
        config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
        async with running_bridge(config):
            code, out, err = await run_cli("trigger", "-c", str(path), "--sink", "agent")
    finally:
        await receiver.stop()
    assert code == 1, err
    assert "dead: sink agent dead-lettered" in out
    assert "\\x1b]52;c;" in out
    for raw in ("\x1b", "\r", "\x07", "\u202e"):
        assert raw not in out + err
