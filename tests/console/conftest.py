"""Fixtures for the console's tests: a bridge fed by the simulator with a file sink and an HTTP
sink on a real receiver, plain HTTP helpers, and the system's Chromium driven headless by
Playwright, with every console error and page error it reports collected."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import AGENT_SECRET, Receiver, make_config, running_bridge, wait_until, websocket_of
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from bridge.config import Config
from bridge.simulator import Simulator
from bridge.supervisor import Supervisor

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TOKEN = "console-token-0123456789"
REBOUND = "rebound.test"
"""A name the browser resolves to 127.0.0.1, as DNS rebinding would."""


def chromium() -> str:
    """The system's Chromium; the browser tests never download one."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    pytest.fail("no Chromium on PATH: install it (apt-get install chromium; `make test` does)")


def console_config(
    tmp_path: Path, sim: Simulator | None, receiver: Receiver, **admin: Any
) -> Config:
    """A bridge routing every event to a file sink ``audit`` and an HTTP sink ``agent``."""
    return make_config(
        tmp_path,
        sim,
        admin={"listen": "127.0.0.1:0", **admin},
        sinks={
            "audit": {"type": "file", "path": str(tmp_path / "events.jsonl")},
            "agent": {
                "type": "http",
                "url": receiver.url,
                "secret": AGENT_SECRET,
                "retry": {"initial": "20ms", "max": "50ms"},
            },
        },
        routes=[{"name": "everything", "sinks": ["audit", "agent"]}],
    )


def base_url(sv: Supervisor) -> str:
    assert sv.admin is not None
    assert sv.admin.port
    return f"http://127.0.0.1:{sv.admin.port}"


async def inject(sim: Simulator, **body: Any) -> list[str]:
    """Events made to happen through the simulator's control API, as a test in any language
    would; their ids."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url}/_sim/events", json=body or {"count": 1}) as response,
    ):
        assert response.status == 200, await response.text()
        ids: list[str] = (await response.json())["event_ids"]
        return ids


@contextlib.asynccontextmanager
async def subscribed_bridge(config: Config) -> AsyncIterator[Supervisor]:
    """A running bridge whose WebSocket has subscribed: events injected now reach it."""
    async with running_bridge(config) as sv:
        await wait_until(lambda: websocket_of(sv).receiving)
        yield sv


@pytest.fixture
async def bridge(tmp_path: Path, sim: Simulator, receiver: Receiver) -> AsyncIterator[Supervisor]:
    """A running bridge without a token, on loopback, showing content."""
    async with subscribed_bridge(console_config(tmp_path, sim, receiver, show_content=True)) as sv:
        yield sv


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium(),
            headless=True,
            args=[f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    """One browser tab, what it reported as errors, and every URL it asked for."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


async def open_tab(browser: Browser, url: str | None = None) -> Tab:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(10_000)
    tab = Tab(context, page)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(str(e)))
    page.on("request", lambda r: tab.urls.append(r.url))
    # The Purge buttons ask first; the tests answer yes.
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    if url is not None:
        response = await page.goto(url)
        assert response is not None
        assert response.status == 200
    return tab
