"""``openmail-bridge demo``: an offline tour a newcomer can follow line by line.

Starts the OpenMail simulator and a bridge (stdout and file sinks) in a new directory under the
system's temporary directory, then plays: emails over the WebSocket; the WebSocket dropped; emails
by signed webhook meanwhile; reconnect with a replay that overlaps them, and one more email; a
summary that shows nothing was lost or doubled. The directory (the bridge's log, the file sink's
events, the state) is kept afterwards, and its path printed, for the newcomer to look at.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from bridge import logs
from bridge.config import Config, build_config
from bridge.metrics import Metrics
from bridge.simulator import DEMO_API_KEY, Simulator
from bridge.sinks import SINK_TYPES
from bridge.supervisor import Supervisor

STEP_TIMEOUT = 8.0


def say(text: str = "") -> None:
    print(f"demo | {text}", flush=True)


def demo_config(workdir: Path, ws_url: str, webhook_secret: str) -> Config:
    raw = {
        "openmail": {
            "api_key": DEMO_API_KEY,
            "websocket": {
                "url": ws_url,
                "reconnect": {"initial": "200ms", "max": "1s"},
                "ping_interval": "5s",
            },
            "webhook": {"listen": "127.0.0.1:0", "secret": webhook_secret},
        },
        "state": {"path": str(workdir / "state" / "bridge.db")},
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"level": "info", "format": "json"},
        "sinks": {
            "console": {"type": "stdout", "format": "envelope"},
            "audit": {"type": "file", "path": str(workdir / "events.jsonl")},
        },
    }
    return build_config(raw, sink_types=SINK_TYPES, base_dir=workdir, env={})


def delivered_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["event_id"] for line in path.read_text().splitlines() if line]


async def wait_for(what: str, predicate: object) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    assert callable(predicate)
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo waited {STEP_TIMEOUT:g}s for {what}")
        await asyncio.sleep(0.05)


def counter_total(metrics: Metrics, name: str) -> int:
    value = metrics.registry.get_sample_value
    return int(sum(value(name, {"source": s}) or 0 for s in ("websocket", "webhook")))


async def _scenario(workdir: Path, keep_running: bool, stop: asyncio.Event) -> int:
    webhook_secret = secrets.token_hex(16)
    sim = Simulator(retry_scale=0.02)
    await sim.start()
    config = demo_config(workdir, sim.ws_url, webhook_secret)
    bridge = Supervisor(config)
    audit = workdir / "events.jsonl"
    try:
        await bridge.start()
        assert bridge.webhook is not None
        assert bridge.websocket is not None
        ws = bridge.websocket
        admin_port = getattr(bridge.admin, "port", None)
        sim.set_webhook(f"http://127.0.0.1:{bridge.webhook.port}/webhooks", webhook_secret)
        say(f"simulator (a local OpenMail) at {sim.base_url}, WebSocket {sim.ws_url}")
        say(
            f"bridge: webhook listener on 127.0.0.1:{bridge.webhook.port}, admin on "
            f"127.0.0.1:{admin_port}, state in {workdir}"
        )
        say(
            "sinks: 'console' prints each event below (envelope format), 'audit' appends to "
            f"{audit}"
        )
        await wait_for("the WebSocket subscription", lambda: ws.receiving)
        say()
        say("1. Three emails arrive while the WebSocket is up: delivered instantly over it.")
        sent: list[str] = []
        for _ in range(3):
            sent.append(await sim.inject(inbox_id="inb_demo_support"))
        await wait_for("three deliveries", lambda: len(delivered_ids(audit)) >= 3)
        say("   delivered: " + ", ".join(delivered_ids(audit)))
        say()
        say("2. OpenMail drops the WebSocket (close 1001) and refuses reconnects for 3 s.")
        sim.refuse(3.0)
        await sim.disconnect(1001)
        await wait_for("the WebSocket to go down", lambda: not ws.receiving)
        say(f"   readiness is now '{bridge.readiness()[0]}': the webhook listener still receives.")
        say()
        say(
            "3. Three more emails: OpenMail sends them as signed webhooks, which the bridge "
            "verifies."
        )
        for _ in range(3):
            sent.append(await sim.inject(inbox_id="inb_demo_sales"))
        await wait_for("webhook deliveries", lambda: len(delivered_ids(audit)) >= 6)
        say("   delivered: " + ", ".join(delivered_ids(audit)[3:]))
        say()
        say("4. The WebSocket comes back and resubscribes with its replay cursor; OpenMail replays")
        say("   everything after it, including the three webhook events: duplicates, dropped.")
        await wait_for("the WebSocket to reconnect", lambda: ws.receiving)
        await wait_for(
            "the replay",
            lambda: counter_total(bridge.metrics, "openmail_bridge_events_duplicate_total") >= 3,
        )
        say("   A seventh email, over the WebSocket again:")
        sent.append(await sim.inject(inbox_id="inb_demo_support"))
        await wait_for("the last delivery", lambda: len(delivered_ids(audit)) >= len(sent))
        say("   delivered: " + delivered_ids(audit)[-1])
        await asyncio.sleep(0.3)  # let any stray duplicate show itself before counting
        got = delivered_ids(audit)
        duplicates = counter_total(bridge.metrics, "openmail_bridge_events_duplicate_total")
        lost = sorted(set(sent) - set(got))
        doubled = len(got) - len(set(got))
        say()
        say(
            f"summary: {len(sent)} sent, {len(set(got))} delivered, {duplicates} duplicates "
            f"dropped, {len(lost)} lost, {doubled} delivered twice"
        )
        ok = not lost and not doubled and len(set(got)) == len(sent)
        say(
            "every event arrived exactly once."
            if ok
            else f"MISMATCH: compare {audit} with the log."
        )
        if keep_running:
            say()
            say(
                f"still running: curl 127.0.0.1:{admin_port}/status, /metrics, /readyz; "
                f"inject with curl -X POST {sim.base_url}/_sim/events -d '{{\"count\": 1}}'; "
                "Ctrl-C to stop."
            )
            await stop.wait()
        return 0 if ok else 1
    finally:
        await bridge.stop()
        await sim.stop()


async def run_demo(*, keep_running: bool = False) -> int:
    """Run the scenario; exit status 0 when every event arrived exactly once."""
    workdir = Path(tempfile.mkdtemp(prefix="openmail-bridge-demo-"))
    log_path = workdir / "bridge.log"
    try:
        with log_path.open("w") as log_file:
            logs.configure("info", "json", stream=log_file)
            say(f"openmail-bridge demo: offline, no account needed (bridge logs: {log_path})")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            try:
                return await _scenario(workdir, keep_running, stop)
            except (TimeoutError, OSError) as exc:
                print(f"demo | failed: {exc} (bridge logs: {log_path})", file=sys.stderr)
                return 1
    finally:
        say(
            f"kept for you to look at: {workdir} (bridge.log, events.jsonl, state/); rm -r it after"
        )
