"""Everything the bridge needs before a run: its config file, a pre-filled dedup record, its port.

The config is the one a user would write for this path: a file sink with ``fsync: batch``, the
default routes (every event to every sink), default log level, no admin listener.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bench.process import API_KEY, ClientProcess
from bridge.store import database

WEBHOOK_SECRET = "whsec_bench_0000000000000000"
SEED_WINDOW = 5 * 86400.0
"""Seeded ids look seen over the last five days: inside the default 7-day window, none is pruned."""


@dataclass(frozen=True, slots=True)
class BridgeFiles:
    config: Path
    state: Path
    sink: Path


def write_config(workdir: Path, *, ws_url: str | None, webhook: bool) -> BridgeFiles:
    """A bridge config taking events by WebSocket (``ws_url``) or by webhook on 127.0.0.1:0."""
    files = BridgeFiles(
        workdir / "bridge.yaml", workdir / "state" / "bridge.db", workdir / "out.jsonl"
    )
    webhook_section: dict[str, object] = {"enabled": webhook}
    if webhook:
        webhook_section |= {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET}
    config = {
        "openmail": {
            "api_key": API_KEY,
            "websocket": {"enabled": ws_url is not None, "url": ws_url or "ws://127.0.0.1:9/v1/ws"},
            "webhook": webhook_section,
        },
        "state": {"path": str(files.state)},
        "admin": {"enabled": False},
        "log": {"level": "info", "format": "json"},
        "shutdown_timeout": "5s",
        "sinks": {"file": {"type": "file", "path": str(files.sink), "fsync": "batch"}},
    }
    files.config.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return files


def seed_seen(db: Path, count: int) -> None:
    """Put ``count`` ids into the dedup record (``seen``) of a new state database.

    The database is created by the store's own code (``store.database``: pragmas, migrations), then
    filled in one transaction, oldest first, so the ``seen_at`` index grows at its end.
    """
    database.prepare_directory(db)
    conn = database.open_database(db, recover=False)
    try:
        now = time.time()
        step = SEED_WINDOW / max(count, 1)
        rows = ((f"evt_seed_{i:09d}", now - SEED_WINDOW + i * step) for i in range(count))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO seen (event_id, seen_at) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def webhook_port(process: ClientProcess, within: float) -> int:
    """The port the bridge's webhook listener bound, from its ``webhook.listening`` log line."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.alive():
        try:
            lines = process.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            if '"webhook.listening"' in line:
                listen = json.loads(line).get("listen", "")
                return int(listen.rpartition(":")[2])
        await asyncio.sleep(0.05)
    raise TimeoutError("the bridge did not report its webhook listener")
