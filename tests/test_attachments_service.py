"""One sink's attachment service (``bridge.attachments.service``) against the real simulator, with
what a running bridge cannot be given: a session trusting a test certificate (an https API),
and an injected sleep and clock (retries and retention without waiting)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SelfSigned
from structlog.testing import capture_logs
from test_store import Clock, SteppedSleep

from bridge.attachments.fetcher import ATTEMPTS, BACKOFF_CAP
from bridge.attachments.service import OFFLOAD_ABOVE, SWEEP_EVERY, AttachmentService
from bridge.attachments.settings import AttachmentsConfig
from bridge.config import Secret
from bridge.events import Origin
from bridge.simulator import DEMO_API_KEY, Simulator
from bridge.store import Delivery

DAY = 86400.0


def delivery(event: dict[str, Any], *, event_type: str = "message.received") -> Delivery:
    return Delivery(
        id=1,
        seq=1,
        sink="agent",
        event_id=str(event.get("event_id", "evt_1")),
        type=event_type,
        inbox_id=None,
        thread_id=None,
        origin=Origin.WEBHOOK,
        received_at=0.0,
        payload=json.dumps(event).encode(),
        attempts=0,
        last_error=None,
    )


class Delays(list[float]):
    """An injected sleep between tries: records each delay and returns at once."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[AttachmentService]]]:
    """Makes started services for the API at a URL; ``session``, ``clock``, ``sleep`` and
    ``pause`` go to the service, the rest are ``attachments`` options."""
    made: list[AttachmentService] = []

    async def make(api_url: str, **options: Any) -> AttachmentService:
        injected = {
            k: options.pop(k) for k in ("session", "clock", "sleep", "pause") if k in options
        }
        config = AttachmentsConfig(fetch=True, **options).bound(
            api_url=api_url, api_key=Secret(DEMO_API_KEY), min_free=0, state_dir=tmp_path
        )
        service = AttachmentService("agent", config, user_agent="test", **injected)
        await service.start()
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()


def exists(path: str | Path) -> bool:
    return Path(path).exists()


def items(body: bytes) -> list[dict[str, Any]]:
    return list(json.loads(body)["message"]["attachments"])


# --- retries -------------------------------------------------------------------------------------


async def test_a_failure_a_retry_may_mend_is_tried_along_the_backoff(
    sim: Simulator, services: Any
) -> None:
    delays = Delays()
    service = await services(sim.base_url, sleep=delays)
    sim.set_attachment_fetch("fail", status=500, times=2)
    event = sim.message_event(attachments=1)
    (item,) = items(await service.payload(delivery(event)))
    assert exists(item["local_path"])
    assert [r.status for r in sim.attachment_requests] == [500, 500, 200]
    assert len(delays) == 2
    assert all(0 <= delay <= BACKOFF_CAP for delay in delays)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_failure_that_stays_is_given_up_after_the_last_try(
    sim: Simulator, services: Any, status: int
) -> None:
    delays = Delays()
    service = await services(sim.base_url, sleep=delays)
    sim.set_attachment_fetch("fail", status=status)
    event = sim.message_event(attachments=1)
    (item,) = items(await service.payload(delivery(event)))
    assert item["reason"] == "http_error"
    assert len(sim.attachment_requests) == ATTEMPTS
    # Not remembered as final: the next delivery of it tries again, as many times, no more.
    sim.set_attachment_fetch("serve")
    (again,) = items(await service.payload(delivery(event)))
    assert "local_path" in again
    assert len(sim.attachment_requests) == ATTEMPTS + 1


async def test_an_unreachable_api_is_a_reason_after_the_last_try(
    sim: Simulator, services: Any
) -> None:
    delays = Delays()
    event = sim.message_event(attachments=1)
    base = sim.base_url
    await sim.stop()
    service = await services(base, sleep=delays)
    (item,) = items(await service.payload(delivery(event)))
    assert item["reason"] == "unreachable"
    assert len(delays) == ATTEMPTS - 1


async def test_a_final_answer_is_remembered_and_a_stored_file_reused(
    sim: Simulator, services: Any
) -> None:
    service = await services(sim.base_url)
    good = sim.message_event(attachments=1)
    missing = sim.message_event(attachments=1)
    missing["message"]["attachments"][0]["url"] += "-gone"  # type: ignore[index]
    first = items(await service.payload(delivery(good)))
    assert items(await service.payload(delivery(good))) == first
    assert items(await service.payload(delivery(missing)))[0]["reason"] == "not_found"
    assert items(await service.payload(delivery(missing)))[0]["reason"] == "not_found"
    assert [r.status for r in sim.attachment_requests] == [200, 404]
    os.unlink(first[0]["local_path"])  # gone meanwhile (retention): fetched again
    assert items(await service.payload(delivery(good))) == first
    assert [r.status for r in sim.attachment_requests] == [200, 404, 200]


# --- an https API --------------------------------------------------------------------------------


@pytest.fixture
async def https_sim(
    self_signed: SelfSigned,
) -> AsyncIterator[tuple[Simulator, aiohttp.ClientSession]]:
    simulator = Simulator()
    await simulator.start(ssl_context=self_signed.server)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self_signed.client))
    try:
        yield simulator, session
    finally:
        await session.close()
        await simulator.stop()


async def test_an_https_api_redirects_to_https_only(
    https_sim: tuple[Simulator, aiohttp.ClientSession], sim: Simulator, services: Any
) -> None:
    api, session = https_sim
    assert api.base_url.startswith("https://")
    service = await services(api.base_url, session=session)
    event = api.message_event(attachments=1)
    (item,) = items(await service.payload(delivery(event)))
    assert "local_path" in item  # served directly over https
    api.set_attachment_fetch("redirect")  # to itself: https
    (item,) = items(await service.payload(delivery(api.message_event(attachments=1))))
    assert "local_path" in item
    api.set_attachment_fetch("redirect", redirect_base=sim.base_url)  # to plain http
    (item,) = items(await service.payload(delivery(api.message_event(attachments=1))))
    assert item["reason"] == "redirect_refused"
    assert sim.attachment_requests == []  # the http target was never asked
    assert [(r.status, r.authorization) for r in api.attachment_requests] == [
        (200, True),
        (302, True),
        (200, False),
        (302, True),
    ]


# --- retention -----------------------------------------------------------------------------------


async def test_the_sweep_removes_files_past_the_retention(sim: Simulator, services: Any) -> None:
    clock, pause = Clock(), SteppedSleep()
    with capture_logs() as logs:
        # A day's retention is swept every SWEEP_EVERY: a tenth of it, at most an hour.
        service = await services(sim.base_url, clock=clock, pause=pause, retention=DAY)
        (item,) = items(await service.payload(delivery(sim.message_event(attachments=1))))
        path = item["local_path"]
        clock.now += DAY / 2
        await pause.step(SWEEP_EVERY)
        assert exists(path)
        clock.now += DAY / 2 + 1
        await pause.step(SWEEP_EVERY)
        assert not exists(path)
    assert [entry["count"] for entry in logs if entry["event"] == "attachments.removed"] == [1]


async def test_an_unusable_directory_is_a_reason_not_a_failed_start(
    sim: Simulator, services: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the directory should be")
    with capture_logs() as logs:
        service = await services(sim.base_url, dir=blocker / "attachments")
        for _ in range(2):
            (item,) = items(await service.payload(delivery(sim.message_event(attachments=1))))
            assert item["reason"] == "write_failed"
        assert sim.attachment_requests == []
        os.unlink(blocker)  # the operator mends it: the next event uses it
        (item,) = items(await service.payload(delivery(sim.message_event(attachments=1))))
        assert exists(item["local_path"])
    # Once when it became unusable, once when it was back; not for each event between.
    assert [e["event"] for e in logs if e["event"].startswith("attachments.dir")] == [
        "attachments.dir_unusable",
        "attachments.dir_usable",
    ]


async def test_a_large_event_is_enriched_off_the_event_loop(sim: Simulator, services: Any) -> None:
    service = await services(sim.base_url)
    event = sim.message_event(attachments=2)
    event["message"]["body_text"] = "long mail " * (OFFLOAD_ABOVE // 5)  # type: ignore[index]
    body = await service.payload(delivery(event))
    assert len(body) > OFFLOAD_ABOVE
    document = json.loads(body)
    assert document["message"]["body_text"] == event["message"]["body_text"]  # type: ignore[index]
    assert all("local_path" in item for item in document["message"]["attachments"])
