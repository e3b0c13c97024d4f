"""Everything the bridge needs before a run: its config file and a pre-filled dedup record.

The config is the one a user would write for each path: one sink (a file with ``fsync: batch``, or
an HTTP hook re-signed with a secret), the default routes (every event to every sink), default log
level, and the admin listener only where the run reads its metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.process import API_KEY
from bridge.store import database

WEBHOOK_SECRET: Final = "whsec_bench_0000000000000000"
HOOK_SECRET: Final = "bench_hook_secret_0000000000000000"
"""What the bridge re-signs its HTTP deliveries with, and the receiver checks them against."""
BACKLOG_RETRY: Final = {"initial": "50ms", "max": "250ms"}
"""The backlog row's retry schedule: short, so the drain starts within 250 ms of the hook coming
back instead of at the next step of the default curve (up to five minutes)."""
SEED_WINDOW = 5 * 86400.0
"""Seeded ids look seen over the last five days: inside the default 7-day window, none is pruned."""


@dataclass(frozen=True, slots=True)
class BridgeFiles:
    config: Path
    state: Path


def file_sink(path: Path) -> dict[str, object]:
    return {"type": "file", "path": str(path), "fsync": "batch"}


def http_sink(url: str, *, retry: dict[str, str] | None = None) -> dict[str, object]:
    sink: dict[str, object] = {"type": "http", "url": url, "secret": HOOK_SECRET}
    if retry is not None:
        sink["retry"] = retry
    return sink


def write_config(
    workdir: Path,
    *,
    ws_url: str | None,
    webhook: bool,
    sink: dict[str, object],
    admin: bool = False,
    max_bytes: int | None = None,
    nats: dict[str, object] | None = None,
) -> BridgeFiles:
    """A bridge config taking events by WebSocket (``ws_url``) or by webhook on 127.0.0.1:0,
    delivering them to ``sink``; ``admin``: its admin listener on 127.0.0.1:0 (for
    ``/metrics``); ``max_bytes``: the spool's bound, when the default is too small for the run;
    ``nats``: its ``nats:`` section (with ``consume``, and neither transport, a pure sidecar,
    which is given no API key)."""
    files = BridgeFiles(workdir / "bridge.yaml", workdir / "state" / "bridge.db")
    webhook_section: dict[str, object] = {"enabled": webhook}
    if webhook:
        webhook_section |= {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET}
    state: dict[str, object] = {"path": str(files.state)}
    if max_bytes is not None:
        state["max_bytes"] = max_bytes
    openmail: dict[str, object] = {
        "websocket": {"enabled": ws_url is not None, "url": ws_url or "ws://127.0.0.1:9/v1/ws"},
        "webhook": webhook_section,
    }
    if ws_url is not None or webhook:
        openmail["api_key"] = API_KEY
    config: dict[str, object] = {
        "openmail": openmail,
        "state": state,
        "admin": {"enabled": True, "listen": "127.0.0.1:0"} if admin else {"enabled": False},
        "log": {"level": "info", "format": "json"},
        "shutdown_timeout": "5s",
        "sinks": {str(sink["type"]): sink},
    }
    if nats is not None:
        config["nats"] = nats
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
