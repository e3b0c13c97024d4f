import sqlite3

from conftest import make_config, running_bridge, wait_until, read_lines, sim  # noqa
import structlog

async def test_smoke(sim, tmp_path):
    cfg = make_config(tmp_path, sim, routes=[{"name": "all", "sinks": ["audit"]}])
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(cfg) as sup:
            await wait_until(lambda: sup.websocket.receiving)
            ids = [await sim.inject() for _ in range(5)]
            await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 5)
            print(sup.readiness(), sup.webhook.port)
    print([l["event"] for l in logs][:40])
