"""The simulator's ``/_sim`` control API over real HTTP."""

from __future__ import annotations

import json

import aiohttp
import pytest

from bridge.simulator import Simulator

from .conftest import (
    SALES,
    Receiver,
    closed_code,
    connect,
    of,
    recv,
    signature_ok,
    subscribe,
)

pytestmark = pytest.mark.timeout(20)


async def test_control_api_round_trip(
    sim: Simulator, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    base = sim.base_url
    async with await connect(session, sim) as ws:
        await subscribe(ws, inbox_ids=[SALES])
        async with session.post(f"{base}/_sim/events", json={"count": 2, "inbox_id": SALES}) as r:
            assert r.status == 200
            ids = (await r.json())["event_ids"]
        assert [(await recv(ws))["event_id"] for _ in range(2)] == ids

        async with session.get(f"{base}/_sim/state") as r:
            state = await r.json()
        assert state["connections"][0]["inbox_ids"] == [SALES]
        assert state["connections"][0]["subscribed"] is True
        assert state["events"] == 2

        hook = {"url": receiver.url("sales"), "secret": "shh-sales", "inbox_id": SALES}
        async with session.post(f"{base}/_sim/webhook", json=hook) as r:
            assert r.status == 200
            text = await r.text()
        assert "shh-sales" not in text
        assert json.loads(text)["inboxes"][SALES]["url"] == receiver.url("sales")

        body = {"event": "inbox.suspended", "inbox_id": SALES, "reason": "abuse"}
        async with session.post(f"{base}/_sim/events", json=body) as r:
            [lifecycle] = (await r.json())["event_ids"]
        await sim.wait_for(lambda: bool(of(sim, lifecycle, "webhook")))
        assert receiver.hits[-1].json["reason"] == "abuse"
        assert signature_ok(receiver.hits[-1], "shh-sales")

        payload = {"event": "message.received", "event_id": "evt_custom1", "inbox_id": SALES}
        async with session.post(f"{base}/_sim/events", json={"payload": payload}) as r:
            assert (await r.json())["event_ids"] == ["evt_custom1"]
        assert (await recv(ws))["event_id"] == "evt_custom1"

        async with session.get(f"{base}/_sim/deliveries", params={"event_id": ids[0]}) as r:
            records = await r.json()
        assert [(d["channel"], d["event_id"]) for d in records] == [("websocket", ids[0])]
        async with session.get(f"{base}/_sim/events") as r:
            history = await r.json()
        assert [e["event_id"] for e in history] == [*ids, lifecycle, "evt_custom1"]

        async with session.get(f"{base}/_sim/state") as r:
            state_text = await r.text()
        assert "shh-sales" not in state_text

        async with session.post(f"{base}/_sim/disconnect", json={"code": 4001}) as r:
            assert await r.json() == {"closed": 1}
        assert (await recv(ws))["type"] == "error"
        assert await closed_code(ws) == 4001


async def test_control_api_refuse(sim: Simulator, session: aiohttp.ClientSession) -> None:
    body = {"seconds": 5, "mode": "http", "code": 502}
    async with session.post(f"{sim.base_url}/_sim/refuse", json=body) as r:
        assert (await r.json())["refusing"] is True
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(session, sim)
    assert info.value.status == 502
    async with session.post(f"{sim.base_url}/_sim/refuse", json={"seconds": 0}) as r:
        assert (await r.json())["refusing"] is False
    async with await connect(session, sim) as ws:
        await subscribe(ws)


async def test_control_api_abrupt_disconnect(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        async with session.post(f"{sim.base_url}/_sim/disconnect", json={"abrupt": True}) as r:
            assert await r.json() == {"closed": 1}
        await ws.receive(timeout=2)
        assert ws.close_code == 1006


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/_sim/events", "{not json", "not JSON"),
        ("/_sim/events", "[]", "JSON object"),
        ("/_sim/events", {"count": 0}, "count"),
        ("/_sim/events", {"count": "3"}, "count"),
        ("/_sim/events", {"colour": "red"}, "unknown field(s) colour"),
        ("/_sim/events", {"event": "message.deleted"}, "event: unknown type"),
        ("/_sim/events", {"inbox_id": "inb_other"}, "inbox_id"),
        ("/_sim/events", {"payload": {"event_id": "e"}, "inbox_id": SALES}, "payload"),
        ("/_sim/events", {"payload": "x"}, "payload"),
        ("/_sim/disconnect", {"code": 1006}, "code"),
        ("/_sim/disconnect", {"abrupt": "yes"}, "abrupt"),
        ("/_sim/refuse", {}, "seconds: required"),
        ("/_sim/refuse", {"seconds": 1, "mode": "drop"}, "mode"),
        ("/_sim/refuse", {"seconds": 1, "mode": "http", "code": 200}, "4xx or 5xx"),
        ("/_sim/webhook", {"url": "http://127.0.0.1:9/h"}, "secret"),
        ("/_sim/webhook", {"url": "ftp://x", "secret": "s"}, "http(s)"),
        ("/_sim/webhook", {"url": None, "secret": None, "inbox_id": "inb_x"}, "inb_x"),
    ],
)
async def test_control_api_rejects_bad_input(
    sim: Simulator,
    session: aiohttp.ClientSession,
    path: str,
    body: object,
    fragment: str,
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    async with session.post(sim.base_url + path, data=data) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert fragment in error
    assert sim.events == []
