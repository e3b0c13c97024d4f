"""Attachments the agent opens without the API key, through a real bridge: the OpenMail simulator
serves the files (and fails, redirects, hangs as asked), the bridge downloads them, and a real
HTTP receiver (the agent) gets payloads naming the local files. An ``audit`` file sink beside it
shows what every other sink gets: the bytes as received."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    AGENT_SECRET,
    WEBHOOK_SECRET,
    Receiver,
    bridge_config_dict,
    events_named,
    read_lines,
    running_bridge,
    wait_until,
    webhook_of,
    websocket_of,
)
from structlog.testing import capture_logs

from bridge.attachments.files import DISK_HEADROOM, TEMP_PREFIX, free_disk
from bridge.config import Config, build_config
from bridge.simulator import DEMO_API_KEY, Simulator
from bridge.simulator.attachments import AttachmentSpec
from bridge.sinks import SINK_TYPES

WRONG_KEY = "om_test_not_the_account_key_0000"


def agent_config(
    tmp_path: Path,
    sim: Simulator,
    receiver: Receiver,
    *,
    api_key: str = DEMO_API_KEY,
    websocket: bool = True,
    state: dict[str, Any] | None = None,
    **attachments: Any,
) -> Config:
    """The agent (an HTTP sink fetching attachments) and the conftest's ``audit`` file sink; over
    the simulator's WebSocket, or its webhooks with ``api_url`` given."""
    agent = {
        "type": "http",
        "url": receiver.url,
        "secret": AGENT_SECRET,
        "attachments": {"fetch": True, **attachments},
    }
    overrides: dict[str, Any] = {"sinks": {"agent": agent}, "openmail": {"api_key": api_key}}
    if not websocket:
        overrides["openmail"]["api_url"] = sim.base_url
    if state:
        overrides["state"] = state
    data = bridge_config_dict(tmp_path, sim if websocket else None, **overrides)
    return build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env=os.environ)


def attachment_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "attachments"


def attachments_of(received: Any) -> list[Any]:
    return list(received.json["message"]["attachments"])


def audit_payloads(tmp_path: Path) -> list[bytes]:
    return [line.encode() for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def content(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def mode(path: str | Path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def without_added(document: Any) -> Any:
    """The event as it was before the bridge added to its attachments."""
    data = json.loads(json.dumps(document))
    for item in data["message"]["attachments"]:
        if isinstance(item, dict):
            for key in ("local_path", "sha256", "reason"):
                item.pop(key, None)
    return data


async def run_one(
    config: Config, sim: Simulator, receiver: Receiver, tmp_path: Path, **inject: Any
) -> Any:
    """Inject one event over the WebSocket; the agent's copy of it, once the audit has it too."""
    async with running_bridge(config) as sup:
        await wait_until(lambda: websocket_of(sup).receiving)
        event_id = await sim.inject(**inject)
        await wait_until(lambda: event_id in receiver.accepted_ids())
        await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 1)
    (received,) = [r for r in receiver.accepted if r.json["event_id"] == event_id]
    return received


@dataclass
class Bouncer:
    """Another origin on 127.0.0.1 that answers every request with a redirect to itself."""

    origin: str = ""
    requests: list[web.Request] = field(default_factory=list)

    async def bounce(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        return web.Response(status=302, headers={"Location": "/again"})


@pytest.fixture
async def bouncer() -> AsyncIterator[Bouncer]:
    server = Bouncer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.bounce)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


# --- the files -----------------------------------------------------------------------------------


async def test_the_agent_opens_each_attachment_by_its_local_path(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = agent_config(tmp_path, sim, receiver)
    received = await run_one(config, sim, receiver, tmp_path, attachments=3)
    message_id = received.json["message"]["id"]
    items = attachments_of(received)
    assert len(items) == 3
    directory = attachment_dir(tmp_path)
    for item in items:
        served = sim.attachment(message_id, item["filename"])
        assert served is not None
        path = Path(item["local_path"])
        assert path.is_absolute()
        assert path.parent == directory
        assert item["sha256"] == served.sha256() == path.name
        assert hashlib.sha256(content(path)).hexdigest() == served.sha256()
        assert mode(path) == 0o640
        assert item["url"] == served.url
        assert "reason" not in item
    assert mode(directory) == 0o750
    # Everything else is the event as received; the audit sink got those bytes unchanged.
    (audit,) = audit_payloads(tmp_path)
    assert without_added(received.json) == json.loads(audit)
    assert b"local_path" not in audit
    # Each file was asked for once, with the key.
    requests = sim.attachment_requests
    assert [(r.authorization, r.status) for r in requests] == [(True, 200)] * 3


async def test_a_wrong_api_key_delivers_the_event_with_the_reason_and_asks_once(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = agent_config(tmp_path, sim, receiver, api_key=WRONG_KEY, websocket=False)
    receiver.statuses = [503]  # the first delivery fails, so the sink sends the event again
    with capture_logs() as logs:
        async with running_bridge(config) as sup:
            port = webhook_of(sup).port
            sim.set_webhook(f"http://127.0.0.1:{port}/webhooks", WEBHOOK_SECRET)
            event_id = await sim.inject(attachments=2)
            await wait_until(lambda: event_id in receiver.accepted_ids())
            second = await sim.inject(attachments=1)
            await wait_until(lambda: second in receiver.accepted_ids())
    assert len(receiver.received) == 3  # one retry of the first event
    first = next(r for r in receiver.accepted if r.json["event_id"] == event_id)
    assert [item["reason"] for item in attachments_of(first)] == ["unauthorized"] * 2
    assert all("local_path" not in item for item in attachments_of(first))
    # 401 is final: asked once per attachment, not again for the retried delivery, never later.
    assert [(r.authorization, r.status) for r in sim.attachment_requests] == [(True, 401)] * 3
    not_stored = events_named(logs, "attachments.not_stored")
    assert [entry["reasons"] for entry in not_stored] == [{"unauthorized": 2}] * 2 + [
        {"unauthorized": 1}
    ]
    assert WRONG_KEY not in repr(logs)
    assert all(WRONG_KEY.encode() not in r.body for r in receiver.received)
    assert not list(attachment_dir(tmp_path).iterdir())


async def test_a_redirect_is_followed_once_without_the_key(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    sim.set_attachment_fetch("redirect")
    received = await run_one(agent_config(tmp_path, sim, receiver), sim, receiver, tmp_path,
                             attachments=1)  # fmt: skip
    (item,) = attachments_of(received)
    served = sim.attachment(received.json["message"]["id"], item["filename"])
    assert served is not None
    assert item["sha256"] == served.sha256()
    assert content(item["local_path"]) == served.content()
    api, signed = sim.attachment_requests
    assert (api.authorization, api.status) == (True, 302)
    assert api.path.startswith("/v1/attachments/")
    assert (signed.authorization, signed.status) == (False, 200)
    assert signed.path.startswith("/_sim/signed/")


async def test_a_second_redirect_is_refused(
    tmp_path: Path, sim: Simulator, receiver: Receiver, bouncer: Bouncer
) -> None:
    sim.set_attachment_fetch("redirect", redirect_base=bouncer.origin)
    received = await run_one(agent_config(tmp_path, sim, receiver), sim, receiver, tmp_path,
                             attachments=1)  # fmt: skip
    (item,) = attachments_of(received)
    assert item["reason"] == "redirect_refused"
    (request,) = bouncer.requests  # followed once; its own redirect was not
    assert "Authorization" not in request.headers
    assert [r.status for r in sim.attachment_requests] == [302]


async def test_urls_off_the_api_origin_are_refused_without_a_request(
    tmp_path: Path, sim: Simulator, receiver: Receiver, bouncer: Bouncer
) -> None:
    event = sim.message_event(attachments=1)
    (served,) = event["message"]["attachments"]  # type: ignore[index]
    api_path = served["url"].removeprefix(sim.base_url)
    event["message"]["attachments"] = [  # type: ignore[index]
        {**served, "url": bouncer.origin + api_path},
        {**served, "url": sim.base_url.replace("://", f"://u:{DEMO_API_KEY}@") + api_path},
        {**served, "url": "https://localhost:1" + api_path},
        {"filename": "no-url.txt"},
        "not an object",
        served,
    ]
    with capture_logs() as logs:
        received = await run_one(agent_config(tmp_path, sim, receiver), sim, receiver, tmp_path,
                                 payload=event)  # fmt: skip
    items = attachments_of(received)
    assert [i.get("reason") for i in items[:4]] == [
        "not_api_host",
        "credentials_in_url",
        "not_api_host",
        "no_url",
    ]
    assert items[4] == "not an object"
    assert items[5]["sha256"] == hashlib.sha256(content(items[5]["local_path"])).hexdigest()
    assert bouncer.requests == []
    assert len(sim.attachment_requests) == 1  # only the last one's
    assert [e["reason"] for e in events_named(logs, "attachments.malformed")] == [
        "attachment_not_an_object"
    ]


async def test_a_dot_dot_filename_writes_nothing_outside_the_directory(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    names = ["../../../escape.txt", "..\\..\\escape2.txt", "/etc/escape3.txt"]
    specs = [AttachmentSpec(filename=name, size_bytes=100) for name in names]
    before = tree(tmp_path)
    received = await run_one(agent_config(tmp_path, sim, receiver), sim, receiver, tmp_path,
                             attachments=specs)  # fmt: skip
    items = attachments_of(received)
    assert [item["filename"] for item in items] == names
    directory = attachment_dir(tmp_path)
    # A name with dot segments is not even asked for: on the way to the API they could lead the
    # key elsewhere. A name that only looks absolute is stored under its hash like any other.
    assert [item.get("reason") for item in items] == ["bad_url", "bad_url", None]
    assert Path(items[2]["local_path"]).parent == directory
    assert [r.path.rsplit("/", 1)[1] for r in sim.attachment_requests] == ["%2Fetc%2Fescape3.txt"]
    for name in names:  # where each name would have led, had it become a path
        assert not (directory / name).resolve().exists()
    created = tree(tmp_path) - before
    outside = {p.relative_to(tmp_path) for p in created if directory not in p.parents}
    assert {str(p) for p in outside} <= {
        "events.jsonl",
        "state",
        "state/attachments",
        "state/bridge.db",
        "state/bridge.db-wal",
        "state/bridge.db-shm",
        "state/bridge.db.lock",
    }, outside
    assert [p.name for p in directory.iterdir()] == [items[2]["sha256"]]


# --- the bounds ----------------------------------------------------------------------------------


async def test_over_max_bytes_is_a_reason_whatever_size_was_announced(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    event = sim.message_event(
        attachments=[
            AttachmentSpec(filename="announced.bin", size_bytes=64 << 10),
            AttachmentSpec(filename="lies.bin", size_bytes=64 << 10),
            AttachmentSpec(filename="fits.bin", size_bytes=8 << 10),
        ]
    )
    event["message"]["attachments"][1]["sizeBytes"] = 10  # type: ignore[index]
    config = agent_config(tmp_path, sim, receiver, max_bytes="16KiB")
    received = await run_one(config, sim, receiver, tmp_path, payload=event)
    announced, lies, fits = attachments_of(received)
    assert announced["reason"] == "too_large"
    assert lies["reason"] == "too_large"
    assert lies["sizeBytes"] == 10  # the payload's own values stay as they were
    assert len(content(fits["local_path"])) == 8 << 10
    paths = sorted(r.path.rsplit("/", 1)[1] for r in sim.attachment_requests)
    assert paths == ["fits.bin", "lies.bin"]  # the announced one was never asked for
    assert [p.name for p in attachment_dir(tmp_path).iterdir()] == [fits["sha256"]]


async def test_max_total_bounds_the_directory(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    specs = [AttachmentSpec(size_bytes=8 << 10), AttachmentSpec(size_bytes=8 << 10)]
    config = agent_config(tmp_path, sim, receiver, max_bytes="8KiB", max_total="12KiB")
    received = await run_one(config, sim, receiver, tmp_path, attachments=specs)
    outcomes = sorted(item.get("reason", "stored") for item in attachments_of(received))
    assert outcomes == ["store_full", "stored"]
    files = list(attachment_dir(tmp_path).iterdir())
    assert [f.stat().st_size for f in files] == [8 << 10]


async def test_a_full_directory_makes_room_from_files_not_needed_lately(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    directory = attachment_dir(tmp_path)
    directory.mkdir(parents=True)
    stale = b"s" * (8 << 10)
    stale_file = directory / hashlib.sha256(stale).hexdigest()
    stale_file.write_bytes(stale)
    two_hours_ago = time.time() - 2 * 3600
    os.utime(stale_file, (two_hours_ago, two_hours_ago))
    config = agent_config(tmp_path, sim, receiver, max_bytes="8KiB", max_total="12KiB")
    received = await run_one(config, sim, receiver, tmp_path,
                             attachments=[AttachmentSpec(size_bytes=8 << 10)])  # fmt: skip
    (item,) = attachments_of(received)
    assert "reason" not in item
    assert hashlib.sha256(content(item["local_path"])).hexdigest() == item["sha256"]
    assert [p.name for p in directory.iterdir()] == [item["sha256"]]


async def test_no_space_keeps_ingest_going(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    (tmp_path / "state").mkdir()
    # The spool's floor half a headroom under what is free now: the spool accepts, attachments
    # must not take the disk any lower than the floor plus the headroom.
    floor = free_disk(tmp_path) - DISK_HEADROOM // 2
    config = agent_config(tmp_path, sim, receiver, state={"min_free": str(floor)})
    received = await run_one(config, sim, receiver, tmp_path, attachments=2)
    assert [item["reason"] for item in attachments_of(received)] == ["no_space"] * 2
    assert sim.attachment_requests == []  # refused before the body was asked for
    assert list(attachment_dir(tmp_path).iterdir()) == []


async def test_a_fetch_that_hangs_gives_way_after_the_timeout(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    sim.set_attachment_fetch("hang")
    config = agent_config(tmp_path, sim, receiver, timeout="300ms")
    received = await run_one(config, sim, receiver, tmp_path, attachments=2)
    assert [item["reason"] for item in attachments_of(received)] == ["timeout"] * 2
    assert [r.status for r in sim.attachment_requests] == [None, None]  # held open
    assert not [p for p in attachment_dir(tmp_path).iterdir() if p.name.startswith(TEMP_PREFIX)]


async def test_a_server_error_is_tried_again(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    sim.set_attachment_fetch("fail", status=503, times=1)
    received = await run_one(agent_config(tmp_path, sim, receiver), sim, receiver, tmp_path,
                             attachments=1)  # fmt: skip
    (item,) = attachments_of(received)
    assert hashlib.sha256(content(item["local_path"])).hexdigest() == item["sha256"]
    assert [r.status for r in sim.attachment_requests] == [503, 200]


# --- what is left alone --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attachments",
    [{"url": "x"}, "a string", [], None],
    ids=["object", "string", "empty", "null"],
)
async def test_an_event_without_an_attachment_list_goes_as_received(
    tmp_path: Path, sim: Simulator, receiver: Receiver, attachments: object
) -> None:
    event = sim.message_event()
    event["message"]["attachments"] = attachments  # type: ignore[index]
    with capture_logs() as logs:
        received = await run_one(agent_config(tmp_path, sim, receiver), sim, receiver, tmp_path,
                                 payload=event)  # fmt: skip
    (audit,) = audit_payloads(tmp_path)
    assert received.body == audit
    assert sim.attachment_requests == []
    malformed = events_named(logs, "attachments.malformed")
    expected = ["attachments_not_a_list"] if attachments in ({"url": "x"}, "a string") else []
    assert [entry["reason"] for entry in malformed] == expected


async def test_other_events_go_as_received(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = agent_config(tmp_path, sim, receiver, websocket=False)
    async with running_bridge(config) as sup:
        sim.set_webhook(f"http://127.0.0.1:{webhook_of(sup).port}/webhooks", WEBHOOK_SECRET)
        event_id = await sim.inject(sim.lifecycle_event("inbox.suspended"))
        await wait_until(lambda: event_id in receiver.accepted_ids())
        await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 1)
    (audit,) = audit_payloads(tmp_path)
    assert receiver.accepted[0].body == audit
