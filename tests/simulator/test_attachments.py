"""Classification and served attachments in generated mail, and ``/v1/attachments``: the key,
404, the older docs' redirect to a signed URL, the fault modes and the record of requests.

Expected bytes are computed here with hashlib from the documented rule (the first ``sizeBytes``
bytes of SHAKE-256 of ``"{message_id}/{filename}"``), not with the simulator's own function.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from bridge.simulator import DEMO_API_KEY, AttachmentSpec, Simulator

from .conftest import SALES, connect, recv, subscribe

pytestmark = pytest.mark.timeout(20)

AUTH = {"Authorization": f"Bearer {DEMO_API_KEY}"}


def expected_bytes(message_id: str, filename: str, size: int) -> bytes:
    return hashlib.shake_256(f"{message_id}/{filename}".encode()).digest(size)


def masked(event: dict[str, Any]) -> str:
    """An event's JSON with the parts that are fresh on every call (ids, times) blanked."""
    text = json.dumps(event, sort_keys=True)
    text = re.sub(r"(evt|msg|thr)_[0-9a-f]{16}", r"\1_X", text)
    text = re.sub(r"<[0-9a-f]{32}@", "<X@", text)
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "T", text)


async def post_events(
    session: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{sim.base_url}/_sim/events", json=body) as response:
        return response.status, await response.json()


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        return response.status, await response.read(), response


async def set_mode(session: aiohttp.ClientSession, sim: Simulator, **body: Any) -> dict[str, Any]:
    async with session.post(f"{sim.base_url}/_sim/attachments", json=body) as response:
        data: dict[str, Any] = await response.json()
        assert response.status == 200, data
        return data


# --- classification and attachments in generated mail -------------------------------------------


async def test_events_carry_classification_and_served_attachments(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    body = {
        "inbox_id": SALES,
        "verdict": "spam",
        "category": "personal",
        "auto_replyable": False,
        "attachments": 2,
    }
    async with await connect(session, sim) as ws:
        await subscribe(ws)
        status, answer = await post_events(session, sim, body)
        assert status == 200, answer
        event = await recv(ws)
    [event_id] = answer["event_ids"]
    assert event["event_id"] == event_id
    message = event["message"]
    assert (message["verdict"], message["category"], message["auto_replyable"]) == (
        "spam",
        "personal",
        False,
    )
    msg_id = message["id"]
    first, second = message["attachments"]
    assert first == {
        "filename": "document-1.pdf",
        "contentType": "application/pdf",
        "sizeBytes": 4096,
        "url": f"{sim.base_url}/v1/attachments/{msg_id}/document-1.pdf",
        "parsedText": f"Attachment 1 of {msg_id}: document-1.pdf",
        "extractionMethod": "pdf",
    }
    assert (second["filename"], second["contentType"], second["sizeBytes"]) == (
        "scan-2.png",
        "image/png",
        8192,
    )
    assert second["extractionMethod"] == "ocr"
    summaries = answer["attachments"][event_id]
    for att, summary in zip(message["attachments"], summaries, strict=True):
        data = expected_bytes(msg_id, att["filename"], att["sizeBytes"])
        assert summary["sha256"] == hashlib.sha256(data).hexdigest()
        assert {k: v for k, v in summary.items() if k != "sha256"} == att
        status, served, response = await fetch(session, att["url"], AUTH)
        assert (status, served) == (200, data)
        assert response.headers["Content-Type"] == att["contentType"]


async def test_classification_values_are_set_verbatim_even_when_malformed(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    body = {"verdict": 7, "category": None, "auto_replyable": "no", "count": 2}
    status, answer = await post_events(session, sim, body)
    assert status == 200, answer
    assert "attachments" not in answer  # asked for none: the answer is as before
    for event in sim.events:
        message = event["message"]
        assert isinstance(message, dict)
        assert (message["verdict"], message["category"], message["auto_replyable"]) == (
            7,
            None,
            "no",
        )


async def test_mail_without_the_options_is_unchanged(
    make_sim: Callable[..., Awaitable[Simulator]],
) -> None:
    plain, mixed = await make_sim(seed=21), await make_sim(seed=21)
    expected = [plain.message_event() for _ in range(6)]
    got = [
        mixed.message_event(message={"verdict": "spam"})
        if i == 4
        else mixed.message_event(attachments=1 if i == 2 else None)
        for i in range(6)
    ]
    for i in (0, 1, 3, 5):
        assert masked(got[i]) == masked(expected[i])
        message = got[i]["message"]
        assert isinstance(message, dict)
        assert not {"verdict", "category", "auto_replyable"} & set(message)
    # The option touches only its own field: the rest of that message is what it would have been.
    for i, changed in ((2, "attachments"), (4, "verdict")):
        mine, theirs = dict(got[i]["message"]), dict(expected[i]["message"])  # type: ignore[call-overload]
        mine.pop(changed)
        theirs.pop(changed, None)
        assert masked(mine) == masked(theirs)
        assert got[i]["message"] != expected[i]["message"]


async def test_attachment_specs_choose_names_types_and_sizes(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    specs = [
        {"size_bytes": 0},
        {"filename": "../etc/passwd", "size_bytes": 10},
        {"filename": "notes.txt"},
        {"filename": "big.bin", "size_bytes": 11 * 1024 * 1024},
        {"filename": "report", "content_type": "text/csv; charset=utf-8", "size_bytes": 5},
    ]
    status, answer = await post_events(session, sim, {"attachments": specs})
    assert status == 200, answer
    [event_id] = answer["event_ids"]
    [event] = sim.events
    message = event["message"]
    assert isinstance(message, dict)
    msg_id = message["id"]
    empty, hostile, notes, big, report = message["attachments"]
    assert (empty["filename"], empty["sizeBytes"]) == ("document-1.pdf", 0)
    assert hostile["url"] == f"{sim.base_url}/v1/attachments/{msg_id}/..%2Fetc%2Fpasswd"
    assert hostile["contentType"] == "application/octet-stream"
    assert (notes["contentType"], notes["sizeBytes"], notes["extractionMethod"]) == (
        "text/plain",
        3 * 4096,
        "text",
    )
    assert big["extractionMethod"] == "skipped_too_large"
    assert "parsedText" not in big
    assert report["extractionMethod"] == "csv"
    for att in (empty, hostile, report):
        status, served, response = await fetch(session, att["url"], AUTH)
        assert (status, served) == (200, expected_bytes(msg_id, att["filename"], att["sizeBytes"]))
        assert response.headers["Content-Type"] == att["contentType"]
    assert [s["sha256"] for s in answer["attachments"][event_id]] == [
        hashlib.sha256(expected_bytes(msg_id, a["filename"], a["sizeBytes"])).hexdigest()
        for a in message["attachments"]
    ]


async def test_inject_with_attachments_from_python(sim: Simulator) -> None:
    event_id = await sim.inject(
        attachments=[AttachmentSpec(filename="a.pdf", size_bytes=3)],
        message={"auto_replyable": False},
    )
    [event] = [e for e in sim.events if e["event_id"] == event_id]
    message = event["message"]
    assert isinstance(message, dict)
    assert message["auto_replyable"] is False
    served = sim.attachment(str(message["id"]), "a.pdf")
    assert served is not None
    assert served.content() == expected_bytes(str(message["id"]), "a.pdf", 3)
    assert served.sha256() == hashlib.sha256(served.content()).hexdigest()
    assert sim.attachment(str(message["id"]), "b.pdf") is None
    with pytest.raises(RuntimeError, match="start the simulator"):
        Simulator().message_event(attachments=1)
    with pytest.raises(ValueError, match="negative"):
        sim.message_event(attachments=-1)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"attachments": "2"}, "attachments: a count or a list"),
        ({"attachments": True}, "attachments: a count or a list"),
        ({"attachments": -1}, "between 0 and 20"),
        ({"attachments": 21}, "between 0 and 20"),
        ({"attachments": [3]}, r"attachments\[0\]: must be an object"),
        ({"attachments": [{"name": "x"}]}, r"attachments\[0\]: unknown field"),
        ({"attachments": [{"filename": 1}]}, r"attachments\[0\].filename"),
        ({"attachments": [{"size_bytes": "1"}]}, r"attachments\[0\].size_bytes"),
        ({"attachments": [{"size_bytes": -1}]}, "size_bytes: must be between"),
        ({"attachments": [{"filename": ".."}]}, "cannot be addressed"),
        ({"attachments": [{"filename": ""}]}, "1 to 255"),
        ({"attachments": [{"filename": "a"}, {"filename": "a"}]}, "appears twice"),
        ({"attachments": [{"content_type": "a\nb"}]}, "single-line"),
        ({"verdict": "spam", "event": "inbox.suspended"}, "verdict: only for generated"),
        ({"attachments": 1, "payload": {"event_id": "evt_1"}}, "attachments: only for generated"),
    ],
)
async def test_bad_event_options_are_400(
    sim: Simulator, session: aiohttp.ClientSession, body: dict[str, Any], error: str
) -> None:
    status, answer = await post_events(session, sim, body)
    assert status == 400
    assert re.search(error, answer["error"]), answer
    assert sim.events == []


# --- the download endpoint -----------------------------------------------------------------------


async def test_fetch_needs_the_key_and_is_recorded_without_it(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    event_id = await sim.inject(attachments=1)
    [att] = sim.attachments_of(_message_id(sim, event_id))
    unknown = att.url.rsplit("/", 1)[0] + "/missing.pdf"
    answers = [
        (await fetch(session, att.url, AUTH))[0],
        (await fetch(session, att.url))[0],
        (await fetch(session, att.url, {"Authorization": "Bearer om_live_wrong"}))[0],
        (await fetch(session, att.url, {"Authorization": f"Basic {DEMO_API_KEY}"}))[0],
        (await fetch(session, unknown, AUTH))[0],
        (await fetch(session, unknown))[0],  # a stranger learns nothing about which files exist
    ]
    assert answers == [200, 401, 401, 401, 404, 401]
    sim.rotate_api_key("om_test_rotated_0000")
    assert (await fetch(session, att.url, AUTH))[0] == 401
    requests = [(r.path, r.authorization, r.status) for r in sim.attachment_requests]
    path, missing = att.url.removeprefix(sim.base_url), unknown.removeprefix(sim.base_url)
    assert requests == [
        (path, True, 200),
        (path, False, 401),
        (path, True, 401),
        (path, True, 401),
        (missing, True, 404),
        (missing, False, 401),
        (path, True, 401),
    ]
    async with session.get(f"{sim.base_url}/_sim/attachments") as response:
        text = await response.text()
    assert [r["status"] for r in json.loads(text)["requests"]] == [s for *_, s in requests]
    assert DEMO_API_KEY not in text
    assert DEMO_API_KEY not in repr(sim.attachment_requests)


async def test_redirect_mode_sends_to_a_signed_url_that_needs_no_key(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    event_id = await sim.inject(attachments=1)
    [att] = sim.attachments_of(_message_id(sim, event_id))
    state = await set_mode(session, sim, mode="redirect", times=1)
    assert (state["mode"], state["times"]) == ("redirect", 1)
    status, _, response = await fetch(session, att.url, AUTH)
    assert status == 302
    location = response.headers["Location"]
    assert location.startswith(f"{sim.base_url}/_sim/signed/")
    assert (await fetch(session, att.url, AUTH))[:2] == (200, att.content())  # times=1 is over
    status, served, _ = await fetch(session, location)
    assert (status, served) == (200, att.content())
    assert (await fetch(session, location.replace("signature=", "signature=0")))[0] == 403
    signed = location.removeprefix(sim.base_url).split("?")[0]
    assert [(r.path, r.authorization, r.status) for r in sim.attachment_requests] == [
        (att.url.removeprefix(sim.base_url), True, 302),
        (att.url.removeprefix(sim.base_url), True, 200),  # times=1: serving again
        (signed, False, 200),
        (signed, False, 403),
    ]


async def test_redirect_base_points_the_signed_url_elsewhere(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    event_id = await sim.inject(attachments=1)
    [att] = sim.attachments_of(_message_id(sim, event_id))
    other = f"http://localhost:{sim.port}"
    await set_mode(session, sim, mode="redirect", redirect_base=other)
    for _ in range(2):  # no times: until changed
        status, _, response = await fetch(session, att.url, AUTH)
        assert status == 302
        assert response.headers["Location"].startswith(f"{other}/_sim/signed/")
    status, served, _ = await fetch(session, response.headers["Location"])
    assert (status, served) == (200, att.content())


async def test_fail_mode_answers_every_fetch_then_serves_again(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    event_id = await sim.inject(attachments=1)
    [att] = sim.attachments_of(_message_id(sim, event_id))
    await set_mode(session, sim, mode="fail", times=2)
    assert (await fetch(session, att.url, AUTH))[0] == 500
    assert (await fetch(session, att.url))[0] == 500  # a broken server checks nothing first
    assert (await fetch(session, att.url, AUTH))[:2] == (200, att.content())
    await set_mode(session, sim, mode="fail", status=503)
    assert [(await fetch(session, att.url, AUTH))[0] for _ in range(3)] == [503] * 3


async def test_hang_mode_holds_fetches_until_the_mode_changes(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    event_id = await sim.inject(attachments=1)
    [att] = sim.attachments_of(_message_id(sim, event_id))
    await set_mode(session, sim, mode="hang")
    held = asyncio.create_task(fetch(session, att.url, AUTH))
    await sim.wait_for(lambda: len(sim.attachment_requests) == 1)
    assert sim.attachment_requests[0].status is None
    assert not held.done()
    await set_mode(session, sim, mode="serve")
    assert (await asyncio.wait_for(held, 5))[0] == 503
    assert (await fetch(session, att.url, AUTH))[:2] == (200, att.content())


async def test_hung_fetches_are_answered_when_the_simulator_stops(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    event_id = await sim.inject(attachments=1)
    [att] = sim.attachments_of(_message_id(sim, event_id))
    sim.set_attachment_fetch("hang")
    held = asyncio.create_task(fetch(session, att.url, AUTH))
    await sim.wait_for(lambda: len(sim.attachment_requests) == 1)
    await asyncio.wait_for(sim.stop(), 5)
    assert (await asyncio.wait_for(held, 5))[0] == 503


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "mode: must be one of"),
        ({"mode": "explode"}, "mode: must be one of"),
        ({"mode": "serve", "status": 500}, "only with mode 'fail'"),
        ({"mode": "fail", "status": 200}, "4xx or 5xx"),
        ({"mode": "fail", "times": 0}, "times: must be at least 1"),
        ({"mode": "fail", "redirect_base": "https://x"}, "only with mode 'redirect'"),
        ({"mode": "redirect", "redirect_base": "https://x/path"}, "origin"),
        ({"mode": "redirect", "redirect_base": "ftp://x"}, "origin"),
        ({"mode": "redirect", "redirect_base": "https://u:p@x"}, "user-info"),
        ({"mode": "hang", "later": 1}, "unknown field"),
    ],
)
async def test_bad_fetch_modes_are_400(
    sim: Simulator, session: aiohttp.ClientSession, body: dict[str, Any], error: str
) -> None:
    async with session.post(f"{sim.base_url}/_sim/attachments", json=body) as response:
        assert response.status == 400
        assert error in (await response.json())["error"]
    assert sim.attachment_fetch.mode == "serve"


# --- over TLS ------------------------------------------------------------------------------------


async def test_over_tls_urls_are_https_and_redirects_stay_https(
    tls_context: ssl.SSLContext,
) -> None:
    sim = Simulator(seed=1)
    await sim.start(ssl_context=tls_context)
    try:
        assert sim.base_url.startswith("https://127.0.0.1:")
        assert sim.ws_url.startswith("wss://127.0.0.1:")
        event_id = await sim.inject(attachments=1)
        [att] = sim.attachments_of(_message_id(sim, event_id))
        assert att.url.startswith(f"{sim.base_url}/v1/attachments/")
        sim.set_attachment_fetch("redirect")
        connector = aiohttp.TCPConnector(ssl=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            status, _, response = await fetch(session, att.url, AUTH)
            assert status == 302
            location = response.headers["Location"]
            assert location.startswith(f"{sim.base_url}/_sim/signed/")
            assert (await fetch(session, location))[:2] == (200, att.content())
    finally:
        await sim.stop()


def _message_id(sim: Simulator, event_id: str) -> str:
    [event] = [e for e in sim.events if e["event_id"] == event_id]
    message = event["message"]
    assert isinstance(message, dict)
    return str(message["id"])
