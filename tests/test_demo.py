"""``openmail-bridge demo`` as a newcomer runs it: offline, the scenario printed step by step, a
summary with nothing lost, exit 0 within 30 s; ``--keep-running`` serves /status until Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The demo must not depend on anything the caller's environment points at.
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("OPENMAIL", "NOTIFY_SOCKET", "WATCHDOG", "STATE_DIRECTORY"))
}


def test_demo_plays_the_scenario_and_exits_0_within_30s(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=CLEAN_ENV,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 30
    steps = [
        line.removeprefix("demo | ")
        for line in result.stdout.splitlines()
        if line.startswith("demo | ")
    ]
    text = "\n".join(steps)
    # The scenario, in order: WebSocket, outage, webhook fallback, reconnect with replay, summary.
    markers = [
        "1. Three emails arrive while the WebSocket is up",
        "2. OpenMail drops the WebSocket",
        "readiness is now 'degraded'",
        "3. Three more emails: OpenMail sends them as signed webhooks",
        "4. The WebSocket comes back",
        "duplicates, dropped",
        "A seventh email, over the WebSocket again",
        "summary:",
    ]
    positions = [text.find(marker) for marker in markers]
    assert -1 not in positions, text
    assert positions == sorted(positions), text

    summary = next(line for line in steps if line.startswith("summary:"))
    match = re.fullmatch(
        r"summary: (\d+) sent, (\d+) delivered, (\d+) duplicates dropped, "
        r"0 lost, 0 delivered twice",
        summary,
    )
    assert match, summary
    sent, delivered, duplicates = map(int, match.groups())
    assert sent == delivered >= 7
    assert duplicates >= 3  # the replay overlapped the webhook events
    assert "every event arrived exactly once." in steps

    # The stdout sink printed each event once, as the newcomer sees it.
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    ids = [event["payload"]["event_id"] for event in printed]
    assert len(ids) == len(set(ids)) == delivered
    assert {event["source"] for event in printed} == {"websocket", "webhook"}
    assert list(tmp_path.iterdir()) == []  # nothing in the caller's directory

    # The files the narration names are there afterwards, as it says.
    workdir = kept_directory(steps)
    try:
        assert f"(bridge logs: {workdir / 'bridge.log'})" in steps[0]
        assert any(str(workdir / "events.jsonl") in line for line in steps)
        assert "ws.connected" in (workdir / "bridge.log").read_text()
        assert delivered_ids(workdir / "events.jsonl") == ids
        assert (workdir / "state" / "bridge.db").exists()
    finally:
        shutil.rmtree(workdir)


def kept_directory(steps: list[str]) -> Path:
    found = re.search(r"kept for you to look at: (\S+) ", steps[-1])
    assert found, steps[-1]
    return Path(found.group(1))


def delivered_ids(path: Path) -> list[str]:
    return [json.loads(line)["event_id"] for line in path.read_text().splitlines()]


def test_a_failed_demo_points_at_a_log_that_is_there() -> None:
    # A step that cannot wait at all fails at its first wait, as a stuck step would after 8 s.
    script = "import asyncio, bridge.demo as d; d.STEP_TIMEOUT = 0; exit(asyncio.run(d.run_demo()))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, env=CLEAN_ENV, check=False)  # fmt: skip
    assert result.returncode == 1
    steps = [line.removeprefix("demo | ") for line in result.stdout.splitlines()]
    workdir = kept_directory(steps)
    try:
        failure = re.search(r"demo \| failed: the demo waited 0s for .+ \(bridge logs: (\S+)\)",
                            result.stderr)  # fmt: skip
        assert failure, result.stderr
        assert Path(failure.group(1)) == workdir / "bridge.log"
        assert "bridge.started" in Path(failure.group(1)).read_text()
    finally:
        shutil.rmtree(workdir)


def test_demo_keep_running_serves_status_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "demo", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        admin_port = None
        for line in proc.stdout:
            if found := re.search(r"admin on 127\.0\.0\.1:(\d+)", line):
                admin_port = int(found.group(1))
            if "still running:" in line:
                break
            assert time.monotonic() < deadline, "the demo did not reach --keep-running"
        else:
            raise AssertionError(
                f"the demo ended early: {proc.stderr.read() if proc.stderr else ''}"
            )
        assert admin_port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=5) as response:
            status = json.loads(response.read())
        assert status["state"] == "ready"
        assert set(status["sinks"]) == {"audit", "console"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout is not None
        rest = [line.removeprefix("demo | ") for line in proc.stdout.read().splitlines()]
        shutil.rmtree(kept_directory(rest))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
