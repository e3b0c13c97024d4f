"""The admin server: /healthz, /readyz, /metrics and /status in every state a bridge can be in,
public and private paths with and without ``admin.token`` on loopback and other addresses, and
``openmail-bridge status`` against a bridge in a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    AGENT_SECRET,
    Receiver,
    bridge_config_dict,
    free_port,
    make_config,
    read_lines,
    running_bridge,
    signed,
    start_bridge_process,
    wait_until,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from bridge import admin as admin_module
from bridge.config import config_warnings
from bridge.simulator import Simulator
from bridge.store import Store
from bridge.supervisor import Supervisor

# --- helpers --------------------------------------------------------------------------------------


def event_body(event_id: str, inbox_id: str = "inb_demo_support", text: str = "hello") -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": inbox_id,
            "occurred_at": "2026-02-24T10:05:00Z",
            "message": {"id": f"msg_{event_id}", "subject": "hi", "body_text": text},
        }
    ).encode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Admin:
    """Talks to one bridge's admin server and webhook listener."""

    def __init__(self, session: aiohttp.ClientSession, sv: Supervisor) -> None:
        self.session, self.sv = session, sv
        assert sv.admin is not None
        assert sv.admin.port
        self.base = f"http://127.0.0.1:{sv.admin.port}"

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.get(self.base + path, headers=headers) as response:
            text = await response.text()
            if response.content_type == "application/json":
                return response.status, json.loads(text)
            return response.status, text

    async def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Samples by name, keyed by their sorted labels."""
        status, text = await self.get("/metrics")
        assert status == 200
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            out.setdefault(family.name, {})
            for sample in family.samples:
                key = tuple(sorted(sample.labels.items()))
                out.setdefault(sample.name, {})[key] = sample.value
        return out

    async def post_event(self, body: bytes, headers: dict[str, str]) -> int:
        assert self.sv.webhook is not None
        url = f"http://127.0.0.1:{self.sv.webhook.port}/webhooks"
        async with self.session.post(url, data=body, headers=headers) as response:
            return response.status


def sample(metrics: dict[str, Any], name: str, **labels: str) -> float | None:
    value = metrics.get(name, {}).get(tuple(sorted(labels.items())))
    return None if value is None else float(value)


# --- /healthz and /readyz -------------------------------------------------------------------------


async def test_ready_when_websocket_subscribed_and_webhook_up(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(make_config(tmp_path, sim)) as sv:
        admin = Admin(http, sv)
        ws = sv.websocket
        assert ws is not None
        await wait_until(lambda: ws.receiving)
        assert await admin.get("/healthz") == (
            200,
            {"status": "ok", "time": pytest.approx(time.time(), abs=5)},
        )
        status, body = await admin.get("/readyz")
        assert status == 200
        assert body == {
            "status": "ready",
            "websocket": "subscribed",
            "webhook": "listening",
            "store": "writable",
        }


async def test_degraded_while_simulator_refuses_then_ready_again(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(make_config(tmp_path, sim)) as sv:
        admin, ws = Admin(http, sv), sv.websocket
        assert ws is not None
        await wait_until(lambda: ws.receiving)
        sim.refuse(30, mode="http", code=503)
        await sim.disconnect(1001)
        await wait_until(lambda: not ws.receiving)
        status, body = await admin.get("/readyz")
        assert status == 200, body
        assert body["status"] == "degraded"
        assert body["webhook"] == "listening"
        assert body["store"] == "writable"
        assert body["websocket"] in ("down", "connecting")
        assert (await admin.get("/healthz"))[0] == 200
        sim.refuse(0)
        await wait_until(lambda: ws.receiving)
        assert await admin.get("/readyz") == (
            200,
            {
                "status": "ready",
                "websocket": "subscribed",
                "webhook": "listening",
                "store": "writable",
            },
        )


async def test_degraded_when_simulator_down(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(make_config(tmp_path, sim)) as sv:
        admin, ws = Admin(http, sv), sv.websocket
        assert ws is not None
        await wait_until(lambda: ws.receiving)
        await sim.stop()
        await wait_until(lambda: not ws.receiving)
        status, body = await admin.get("/readyz")
        assert (status, body["status"], body["webhook"]) == (200, "degraded", "listening")
        assert body["websocket"] != "subscribed"


async def test_unavailable_when_websocket_only_and_simulator_down(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(
        tmp_path,
        None,
        openmail={
            "websocket": {"enabled": True, "url": f"ws://127.0.0.1:{free_port()}/v1/ws"},
            "webhook": {"enabled": False},
        },
    )
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        assert sv.webhook is None
        await wait_until(lambda: sv.websocket is not None and sv.websocket.attempts >= 1)
        status, body = await admin.get("/readyz")
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["webhook"] == "disabled"
        assert body["store"] == "writable"
        assert body["websocket"] in ("down", "connecting")
        assert (await admin.get("/healthz"))[0] == 200


async def test_ready_with_webhook_only_config(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # bridge_config_dict without a simulator disables the WebSocket: the webhook is the only source.
    async with running_bridge(make_config(tmp_path, None)) as sv:
        assert sv.websocket is None
        status, body = await Admin(http, sv).get("/readyz")
        assert status == 200
        assert body == {
            "status": "ready",
            "websocket": "disabled",
            "webhook": "listening",
            "store": "writable",
        }
        # The WebSocket-down alert needs this to stay quiet here (deploy/prometheus-rules.yaml).
        metrics = await Admin(http, sv).metrics()
        assert sample(metrics, "openmail_bridge_websocket_enabled") == 0
        assert sample(metrics, "openmail_bridge_websocket_connected") == 0


async def test_ready_with_webhook_disabled_and_websocket_up(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path, sim, openmail={"webhook": {"enabled": False}})
    async with running_bridge(config) as sv:
        assert sv.webhook is None
        ws = sv.websocket
        assert ws is not None
        await wait_until(lambda: ws.receiving)
        status, body = await Admin(http, sv).get("/readyz")
        assert status == 200
        assert body == {
            "status": "ready",
            "websocket": "subscribed",
            "webhook": "disabled",
            "store": "writable",
        }


@contextlib.contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem, so SQLite really runs out of space (tests run as root)."""
    where.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: the filesystem is full
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


async def test_store_unwritable_makes_readyz_503_but_healthz_stays_200(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        config = make_config(tmp_path, None, state={"path": str(disk / "bridge.db"), "min_free": 0})
        async with running_bridge(config) as sv:
            admin = Admin(http, sv)
            assert (await admin.get("/readyz"))[0] == 200
            filler = fill(disk)
            # The write fails for real (SQLITE_FULL): nothing is stored, OpenMail is told to retry.
            body = event_body("evt_disk_full", text="x" * 4000)
            assert await admin.post_event(body, signed(body)) == 503
            status, ready = await admin.get("/readyz")
            assert status == 503
            assert ready == {
                "status": "unavailable",
                "websocket": "disabled",
                "webhook": "listening",
                "store": "unwritable",
            }
            assert (await admin.get("/healthz"))[0] == 200
            metrics = await admin.metrics()
            assert sample(metrics, "openmail_bridge_store_writable") == 0
            assert (
                sample(
                    metrics, "openmail_bridge_webhook_rejected_total", reason="store_unavailable"
                )
                == 1
            )
            filler.unlink()
            await wait_until(lambda: sv.store.writable)
            assert await admin.get("/readyz") == (
                200,
                {
                    "status": "ready",
                    "websocket": "disabled",
                    "webhook": "listening",
                    "store": "writable",
                },
            )
            assert await admin.post_event(body, signed(body)) == 200


async def test_store_full_makes_readyz_503_but_healthz_stays_200(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # min_free above what the disk has: the spool refuses every event (the "full disk" case).
    config = make_config(tmp_path, None, state={"min_free": 1 << 60})
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        body = event_body("evt_no_room")
        assert await admin.post_event(body, signed(body)) == 503
        status, ready = await admin.get("/readyz")
        assert status == 503, ready
        assert ready["status"] == "unavailable"
        assert ready["store"] == "full"
        assert (await admin.get("/healthz"))[0] == 200


async def test_readyz_reports_full_once_events_are_refused_under_the_bound(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Three events fit and stay held (the sink is down); the fourth does not, though the held
    # bytes are still under max_bytes: readiness must say what the webhook answers.
    size = len(event_body("evt_room_1"))
    config = make_config(
        tmp_path,
        None,
        state={"max_bytes": 3 * size + size // 2},
        sinks={"agent": {"type": "http", "url": "http://127.0.0.1:9/hook"}},
    )
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        for n in (1, 2, 3):
            body = event_body(f"evt_room_{n}")
            assert await admin.post_event(body, signed(body)) == 200
        assert (await admin.get("/readyz"))[0] == 200
        body = event_body("evt_room_4")
        assert await admin.post_event(body, signed(body)) == 503
        status, ready = await admin.get("/readyz")
        assert status == 503, ready
        assert ready["store"] == "full"


async def test_healthz_and_readyz_unaffected_by_a_sink_that_is_down(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(
        tmp_path,
        None,
        sinks={
            "agent": {
                "type": "http",
                "url": f"http://127.0.0.1:{free_port()}/hook",
                "retry": {"initial": "20ms", "max": "100ms"},
            }
        },
    )
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        body = event_body("evt_sink_down")
        assert await admin.post_event(body, signed(body)) == 200
        await wait_until(lambda: sv.dispatcher.workers["agent"].state.last_error is not None)
        assert (await admin.get("/healthz"))[0] == 200
        status, ready = await admin.get("/readyz")
        assert (status, ready["status"]) == (200, "ready")
        _, st = await admin.get("/status")
        assert st["sinks"]["agent"]["pending"] == 1
        assert "127.0.0.1" in st["sinks"]["agent"]["last_error"]


# --- /metrics -------------------------------------------------------------------------------------

DOCUMENTED_METRICS = (
    "openmail_bridge_events_received",
    "openmail_bridge_events_duplicate",
    "openmail_bridge_webhook_rejected",
    "openmail_bridge_websocket_connected",
    "openmail_bridge_websocket_enabled",
    "openmail_bridge_websocket_reconnects",
    "openmail_bridge_possible_gaps",
    "openmail_bridge_spool_bytes",
    "openmail_bridge_disk_free_bytes",
    "openmail_bridge_deliveries",
    "openmail_bridge_delivery_latency_seconds",
    "openmail_bridge_pending",
    "openmail_bridge_dead_letters",
    "openmail_bridge_oldest_pending_age_seconds",
    "openmail_bridge_config_reloads",
)


async def prime_unknown_cursor(state_path: Path) -> None:
    """Give the store a replay cursor OpenMail does not know (an event older than its history)."""
    store = await Store.open(state_path)
    await store.close()
    with contextlib.closing(sqlite3.connect(state_path)) as conn, conn:
        conn.execute("INSERT INTO meta VALUES ('cursor', 'evt_forgotten_long_ago')")


async def test_metrics_names_and_values_move_with_events(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    rejecting = Receiver(statuses=[400] * 10)
    await rejecting.start()
    try:
        config = make_config(
            tmp_path,
            sim,
            sinks={
                "agent": {
                    "type": "http",
                    "url": f"http://127.0.0.1:{free_port()}/down",
                    "retry": {"initial": "20ms", "max": "100ms"},
                },
                "strict": {"type": "http", "url": rejecting.url},
            },
        )
        await prime_unknown_cursor(config.state.path)
        async with running_bridge(config) as sv:
            admin, ws = Admin(http, sv), sv.websocket
            assert ws is not None
            await wait_until(lambda: ws.receiving)
            before = await admin.metrics()
            for name in DOCUMENTED_METRICS:
                assert name in before, f"{name} missing from /metrics"
            assert sample(before, "openmail_bridge_websocket_connected") == 1
            assert sample(before, "openmail_bridge_websocket_enabled") == 1
            assert sample(before, "openmail_bridge_possible_gaps_total", reason="cursor_reset") == 1

            ws_ids = [await sim.inject() for _ in range(2)]
            body = event_body("evt_by_webhook")
            assert await admin.post_event(body, signed(body)) == 200
            assert (
                await admin.post_event(body, signed(body)) == 200
            )  # OpenMail's retry: a duplicate
            assert await admin.post_event(body, signed(body, "not-the-secret")) == 400
            audit = tmp_path / "events.jsonl"
            await wait_until(lambda: len(read_lines(audit)) == 3)
            await wait_until(lambda: len(rejecting.received) == 3)
            await wait_until(lambda: sv.dispatcher.workers["strict"].state.dead == 3)
            await sim.disconnect(1006, abrupt=True)
            await wait_until(lambda: ws.attempts >= 1 and ws.receiving)

            m = await admin.metrics()
            assert sample(m, "openmail_bridge_events_received_total", source="websocket") == 2
            assert sample(m, "openmail_bridge_events_received_total", source="webhook") == 1
            assert sample(m, "openmail_bridge_events_duplicate_total", source="webhook") == 1
            assert sample(m, "openmail_bridge_webhook_rejected_total", reason="bad_signature") == 1
            assert sample(m, "openmail_bridge_websocket_connected") == 1
            assert (sample(m, "openmail_bridge_websocket_reconnects_total") or 0) >= 1
            assert (
                sample(m, "openmail_bridge_deliveries_total", sink="audit", outcome="delivered")
                == 3
            )
            assert sample(m, "openmail_bridge_deliveries_total", sink="strict", outcome="dead") == 3
            assert (
                sample(m, "openmail_bridge_deliveries_total", sink="agent", outcome="retry") or 0
            ) >= 1
            assert sample(m, "openmail_bridge_delivery_latency_seconds_count", sink="audit") == 3
            assert sample(m, "openmail_bridge_pending", sink="agent") == 3
            assert sample(m, "openmail_bridge_pending", sink="audit") == 0
            assert sample(m, "openmail_bridge_dead_letters", sink="strict") == 3
            assert (sample(m, "openmail_bridge_spool_bytes") or 0) > (
                sample(before, "openmail_bridge_spool_bytes") or 0
            )
            assert (sample(m, "openmail_bridge_disk_free_bytes") or 0) > 0
            assert {line["event_id"] for line in read_lines(audit)} == {*ws_ids, "evt_by_webhook"}
    finally:
        await rejecting.stop()


def _write_garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # SQLite's header, then garbage: a damaged database (a file without the header is a wrong
    # path, refused and never moved aside).
    path.write_bytes(b"SQLite format 3\x00" + b"this is not a database" * 400)


async def test_a_corrupt_database_moved_aside_is_a_gauge_until_it_is_removed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path, None)
    state = Path(config.state.path)
    _write_garbage(state)
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        (aside,) = [n for n in os.listdir(state.parent) if ".corrupt-" in n]
        assert sample(await admin.metrics(), "openmail_bridge_store_corrupt_files") == 1
        os.unlink(state.with_name(aside))  # the operator took what they needed from it
        assert sample(await admin.metrics(), "openmail_bridge_store_corrupt_files") == 0


async def test_possible_gap_counted_when_the_replay_hits_its_limit(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(make_config(tmp_path, sim)) as sv:
        admin, ws = Admin(http, sv), sv.websocket
        assert ws is not None
        await wait_until(lambda: ws.receiving)
        await sim.inject()  # gives the bridge a replay cursor
        await wait_until(lambda: sv.store.cursor is not None)
        sim.refuse(30, mode="http", code=503)
        await sim.disconnect(1001)
        await wait_until(lambda: not ws.receiving)
        # A replayed event is told apart from a live one by occurring before the subscribe:
        # these happened well before it.
        earlier = (
            (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        # One more than OpenMail replays.
        missed = [await sim.inject(occurred_at=earlier) for _ in range(101)]
        sim.refuse(0)
        await wait_until(lambda: ws.receiving)
        # OpenMail replays 100; the bridge asks for the page after them and gets the 101st.
        await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 102)
        m = await admin.metrics()
        assert sample(m, "openmail_bridge_possible_gaps_total", reason="replay_limit") == 1
        _, status = await admin.get("/status")
        assert status["possible_gaps"] == 1
        delivered = {line["event_id"] for line in read_lines(tmp_path / "events.jsonl")}
        assert set(missed) <= delivered


async def test_pending_gauge_returns_to_zero_once_a_sink_drains(
    tmp_path: Path, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.up = False  # answers 503: retried, the row stays pending
    config = make_config(
        tmp_path,
        None,
        sinks={
            "agent": {
                "type": "http",
                "url": receiver.url,
                "secret": AGENT_SECRET,
                "retry": {"initial": "20ms", "max": "100ms"},
            }
        },
    )
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        body = event_body("evt_waits")
        assert await admin.post_event(body, signed(body)) == 200
        await wait_until(lambda: len(receiver.received) >= 1)
        m = await admin.metrics()
        assert sample(m, "openmail_bridge_pending", sink="agent") == 1
        assert sample(m, "openmail_bridge_dead_letters", sink="agent") == 0
        receiver.up = True
        await wait_until(lambda: receiver.accepted_ids() == ["evt_waits"])
        await wait_until(lambda: sv.dispatcher.workers["agent"].state.delivered == 1)

        async def drained() -> bool:
            return sample(await admin.metrics(), "openmail_bridge_pending", sink="agent") == 0

        await wait_until(drained)
        assert sample(await admin.metrics(), "openmail_bridge_spool_bytes") == 0


async def test_metrics_content_type_is_prometheus_text(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_bridge(make_config(tmp_path, None)) as sv:
        response = await http.get(f"{Admin(http, sv).base}/metrics")
        text = await response.text()
    assert response.status == 200
    # The text exposition format (prometheus-client picks the version it writes).
    assert response.content_type == "text/plain"
    assert "version=" in response.headers["Content-Type"]
    families = list(text_string_to_metric_families(text))
    assert {f.name for f in families} >= set(DOCUMENTED_METRICS)


# --- /status --------------------------------------------------------------------------------------


async def test_status_reports_connection_cursor_gaps_sinks_and_removed_sinks(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    down_url = f"http://127.0.0.1:{free_port()}/down"
    raw = bridge_config_dict(
        tmp_path,
        sim,
        sinks={
            "agent": {"type": "http", "url": down_url, "retry": {"initial": "20ms", "max": "100ms"}}
        },
    )
    config = make_config(tmp_path, sim, sinks=raw["sinks"])
    await prime_unknown_cursor(config.state.path)
    without_agent = dict(raw, sinks={"audit": raw["sinks"]["audit"]})
    sv = Supervisor(config, reload_config=lambda: make_config(tmp_path, sim, **without_agent))
    await sv.start()
    try:
        admin, ws = Admin(http, sv), sv.websocket
        assert ws is not None
        await wait_until(lambda: ws.receiving)
        first = await sim.inject()
        last = await sim.inject()
        # Counted once the rows are gone from the store: the file has the lines a moment before.
        await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 2)
        await wait_until(lambda: sv.dispatcher.workers["agent"].state.last_error is not None)
        status, st = await admin.get("/status")
        assert status == 200
        assert st["state"] == "ready"
        assert st["parts"] == {
            "websocket": "subscribed",
            "webhook": "listening",
            "store": "writable",
        }
        assert st["websocket"]["state"] == "subscribed"
        assert st["cursor"] == last
        assert st["websocket"]["cursor"] == last
        assert st["last_event_at"] == pytest.approx(time.time(), abs=10)
        assert st["possible_gaps"] == 1  # the unknown cursor was reset
        assert st["sinks"]["audit"]["pending"] == 0
        assert st["sinks"]["audit"]["dead"] == 0
        assert st["sinks"]["audit"]["delivered"] == 2
        assert st["sinks"]["agent"]["pending"] == 2
        assert st["sinks"]["agent"]["dead"] == 0
        assert st["sinks"]["agent"]["last_error"]
        assert st["removed_sinks"] == []
        assert first != last
        # The filesystem under the state database, as the bridge's own floor check reads it.
        disk = os.statvfs(tmp_path)
        assert 0 < st["spool"]["free_disk"] <= disk.f_blocks * disk.f_frsize
        assert st["spool"]["disk_size"] == disk.f_blocks * disk.f_frsize
        assert st["spool"]["min_free"] == sv.config.state.min_free

        assert await sv.reload()
        _, st = await admin.get("/status")
        assert st["removed_sinks"] == ["agent"]
        assert st["sinks"]["agent"].pop("oldest_pending_age") > 0  # still waiting
        assert st["sinks"]["agent"] == {"pending": 2, "dead": 0, "configured": False}
        assert st["config"]["last_reload"]["ok"] is True
        assert st["config"]["last_reload"]["result"] == "ok"
        assert st["uptime"] >= 0
    finally:
        await sv.stop()


# --- admin.token ----------------------------------------------------------------------------------


PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")


async def test_with_a_token_public_paths_answer_without_it_and_status_needs_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    token = "admin-token-for-tests-0003"
    config = make_config(tmp_path, None, admin={"listen": "127.0.0.1:0", "token": token})
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        # What probes and Prometheus need answers without a token, and with a wrong one.
        for path in PUBLIC_PATHS:
            assert (await admin.get(path))[0] == 200, path
            assert (await admin.get(path, token="wrong-token"))[0] == 200, path
        # Private paths need it even on loopback once it is set; an unknown path is private.
        for path in ("/status", "/console"):
            status, body = await admin.get(path)
            assert status == 401, path
            assert token not in json.dumps(body)
            assert (await admin.get(path, token="wrong-token"))[0] == 401, path
            assert (await admin.get(path, token=token + "x"))[0] == 401, path
            assert (await admin.get(path, token=token[:-1]))[0] == 401, path
        assert (await admin.get("/status", token=token))[0] == 200
        assert (await admin.get("/console", token=token))[0] == 404
        async with http.get(f"{admin.base}/status") as response:
            assert response.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(
            f"{admin.base}/status", headers={"Authorization": f"Basic {token}"}
        ) as response:
            assert response.status == 401


async def test_without_a_token_on_a_non_loopback_address_private_paths_answer_403(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # 0.0.0.0 is not a loopback address; the test still connects through 127.0.0.1.
    config = make_config(tmp_path, None, admin={"listen": "0.0.0.0:0"})
    with capture_logs() as logged:
        async with running_bridge(config) as sv:
            admin = Admin(http, sv)
            for path in PUBLIC_PATHS:
                assert (await admin.get(path))[0] == 200, path
            for path in ("/status", "/console"):
                status, body = await admin.get(path)
                assert status == 403, path
                assert "admin.token" in body["hint"]
            # Sending some token changes nothing: there is none to compare it with.
            assert (await admin.get("/status", token="anything"))[0] == 403
    warnings = [e for e in logged if e["event"] == "admin.private_paths_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "set admin.token" in warnings[0]["hint"]


async def test_with_a_token_on_a_non_loopback_address_status_answers_with_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    token = "admin-token-for-tests-0004"
    config = make_config(tmp_path, None, admin={"listen": "0.0.0.0:0", "token": token})
    with capture_logs() as logged:
        async with running_bridge(config) as sv:
            admin = Admin(http, sv)
            assert (await admin.get("/status"))[0] == 401
            assert (await admin.get("/status", token=token))[0] == 200
            assert (await admin.get("/metrics"))[0] == 200
    assert not [e for e in logged if e["event"] == "admin.private_paths_disabled"]


async def test_without_a_token_on_loopback_status_answers(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with capture_logs() as logged:
        async with running_bridge(make_config(tmp_path, None)) as sv:
            status, body = await Admin(http, sv).get("/status")
            assert status == 200
            assert body["state"] == "ready"
    assert not [e for e in logged if e["event"] == "admin.private_paths_disabled"]


# --- openmail-bridge status -----------------------------------------------------------------------


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the bridge exited"
        with contextlib.suppress(OSError):
            if http_get(url)[0] == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def status_command(config_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "status", "-c", str(config_path), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_status_command_prints_summary_and_json(
    tmp_path: Path, bridge_processes: list[Any]
) -> None:
    admin_port = free_port()
    data = bridge_config_dict(
        tmp_path,
        None,
        admin={"listen": f"127.0.0.1:{admin_port}"},
        sinks={
            "audit": {"type": "file", "path": str(tmp_path / "ev.jsonl")},
            "agent": {"type": "http", "url": "http://127.0.0.1:9/x", "secret": AGENT_SECRET},
        },
    )
    data["log"] = {"level": "info", "format": "json"}
    path = write_config(tmp_path / "bridge.yaml", data)
    bridge = start_bridge_process(path)
    bridge_processes.append(bridge)
    wait_for_http(f"http://127.0.0.1:{admin_port}/healthz", bridge.proc)

    human = status_command(path)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"state: ready (pid {bridge.proc.pid}, up ")
    assert "  websocket: disabled" in lines
    assert "  webhook: listening" in lines
    assert "  store: writable" in lines
    assert "last event: none since start" in lines
    assert "sinks:" in lines
    assert "  agent (http): delivered 0, pending 0, dead 0" in lines
    assert "  audit (file): delivered 0, pending 0, dead 0" in lines
    assert "  last reload: none since start" in lines
    assert AGENT_SECRET not in human.stdout

    machine = status_command(path, "--json")
    assert machine.returncode == 0, machine.stderr
    status = json.loads(machine.stdout)
    assert status["state"] == "ready"
    assert status["pid"] == bridge.proc.pid
    assert set(status["sinks"]) == {"agent", "audit"}
    assert status["sinks"]["agent"]["type"] == "http"

    bridge.signal(15)
    assert bridge.wait() == 0
    gone = status_command(path)
    assert gone.returncode == 1
    assert "is it running?" in gone.stderr


def test_check_warns_of_a_spool_smaller_than_one_request_body(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, None, state={"max_bytes": "1MiB"}, openmail={"webhook": {"max_body": "2MiB"}}
    )
    (warning,) = [w for w in config_warnings(config) if w.event.startswith("config.spool")]
    assert (warning.event, warning.key) == ("config.spool_smaller_than_max_body", "state.max_bytes")
    assert "(1048576 bytes) is below openmail.webhook.max_body (2097152)" in warning.message


async def test_a_reload_warns_of_what_check_would_warn_of(tmp_path: Path) -> None:
    before = make_config(
        tmp_path, None, state={"max_bytes": "2MiB"}, openmail={"webhook": {"max_body": "1MiB"}}
    )
    after = make_config(
        tmp_path, None, state={"max_bytes": "2MiB"}, openmail={"webhook": {"max_body": "4MiB"}}
    )
    sv = Supervisor(before, reload_config=lambda: after)
    with capture_logs() as logged:
        await sv.start()
        try:
            assert not [e for e in logged if e["event"] == "config.spool_smaller_than_max_body"]
            assert await sv.reload()  # max_body applies on reload; it now passes the spool
        finally:
            await sv.stop()
    (warning,) = [e for e in logged if e["event"] == "config.spool_smaller_than_max_body"]
    assert warning["log_level"] == "warning"
    assert warning["setting"] == "state.max_bytes"


# --- bounds on connections ---------------------------------------------------------------------


async def test_idle_sockets_cannot_take_the_admin_servers_descriptors(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down from 128 connections and 10 s to send headers.
    monkeypatch.setattr(admin_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(admin_module, "HEADER_TIMEOUT", 0.3)
    async with running_bridge(make_config(tmp_path)) as sv:
        admin = Admin(http, sv)
        assert sv.admin is not None
        idle = [await asyncio.open_connection("127.0.0.1", sv.admin.port) for _ in range(4)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", sv.admin.port)
        async with asyncio.timeout(5):
            assert await extra_reader.read() == b""  # beyond the cap: closed as accepted
            for reader, _ in idle:
                assert await reader.read() == b""  # no headers in time: cut
        for _, writer in [*idle, (extra_reader, extra_writer)]:
            writer.close()
        assert (await admin.get("/healthz"))[0] == 200


async def test_a_request_the_parser_cannot_read_is_logged_once_a_minute_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bridge(make_config(tmp_path)) as sv:
        assert sv.admin is not None
        with capture_logs() as logs, caplog.at_level(logging.DEBUG):
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", sv.admin.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
                async with asyncio.timeout(5):
                    assert (await reader.readline()).split()[1] == b"400"
                    while await reader.read(4096):  # aiohttp closes the connection
                        pass
                writer.close()
        assert len([e for e in logs if e["event"] == "admin.bad_request"]) == 1
        assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


async def test_a_trickled_body_cannot_hold_the_admin_servers_connections(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down from 128 connections and 10 s for a body. No credential is needed to post
    # a login, and a body sent a byte at a time used to hold its connection for good.
    monkeypatch.setattr(admin_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(admin_module, "BODY_TIMEOUT", 0.3)
    monkeypatch.setattr(admin_module, "LINGER_TIME", 0.3)
    config = make_config(tmp_path, admin={"listen": "127.0.0.1:0", "token": "t" * 32})
    async with running_bridge(config) as sv:
        admin = Admin(http, sv)
        assert sv.admin is not None
        port = sv.admin.port
        head = (
            f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{"
        ).encode()
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for _, writer in slow:
            writer.write(head)
        async with asyncio.timeout(5):
            for reader, _ in slow:
                # Answered, then closed once the rest of the body has had its short linger.
                answer = await reader.read()
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
                assert b"request body not received within 0.3s" in answer
        for _, writer in slow:
            writer.close()
        assert (await admin.get("/healthz"))[0] == 200


@pytest.mark.parametrize(("token", "warned"), [("letmein", True), ("x" * 16, False)])
def test_a_short_admin_token_is_warned_of(tmp_path: Path, token: str, warned: bool) -> None:
    config = make_config(tmp_path, None, admin={"listen": "0.0.0.0:0", "token": token})
    found = [w for w in config_warnings(config) if w.event == "admin.token_short"]
    assert bool(found) is warned
    assert all(token not in w.message for w in found)
