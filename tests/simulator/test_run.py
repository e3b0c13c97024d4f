"""``serve()``, what ``openmail-bridge simulator`` runs: the banner and a clean stop."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from bridge.simulator import DEMO_API_KEY, serve

from .conftest import (
    closed_code,
    subscribe,
)

pytestmark = pytest.mark.timeout(20)


async def banner(
    capsys: pytest.CaptureFixture[str], stop: asyncio.Event, **options: bool
) -> tuple[str, asyncio.Task[None]]:
    """Start ``serve()`` in the background; its banner once printed, and the task."""
    task = asyncio.create_task(
        serve(
            host="127.0.0.1",
            port=0,
            api_key=None,
            webhook_url=None,
            webhook_secret=None,
            stop=stop,
            **options,
        )
    )
    out = ""
    for _ in range(200):
        out += capsys.readouterr().out
        if "/_sim/state" in out:
            break
        await asyncio.sleep(0.01)
    return out, task


async def test_serve_prints_banner_and_stops(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    stop = asyncio.Event()
    out, task = await banner(capsys, stop)
    match = re.search(r"(ws://127\.0\.0\.1:\d+/v1/ws)", out)
    assert match, out
    assert DEMO_API_KEY in out
    assert "demo key" in out
    assert "/_sim/events" in out
    assert "/_sim/attachments" in out
    assert "close 4001 after the client's first frame" in out
    ws = await session.ws_connect(
        match.group(1), headers={"Authorization": f"Bearer {DEMO_API_KEY}"}
    )
    await subscribe(ws)
    closed = asyncio.create_task(closed_code(ws))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await closed == 1001
    await ws.close()


async def test_serve_can_reject_a_bad_key_on_the_upgrade(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    stop = asyncio.Event()
    out, task = await banner(capsys, stop, reject_on_upgrade=True)
    assert "HTTP 401 on the upgrade" in out
    match = re.search(r"(ws://127\.0\.0\.1:\d+/v1/ws)", out)
    assert match, out
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(match.group(1), headers={"Authorization": "Bearer om_wrong"})
    assert refused.value.status == 401
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_serve_requires_url_and_secret_together() -> None:
    with pytest.raises(ValueError, match="together"):
        await serve(
            host="127.0.0.1",
            port=0,
            api_key=None,
            webhook_url="http://127.0.0.1:9/h",
            webhook_secret=None,
            stop=asyncio.Event(),
        )
