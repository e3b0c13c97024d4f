"""Smoke test of the benchmark harness (``bench/``): it runs end to end in its tiny ``--quick`` mode
and prints the whole table. No speed figure is asserted: that is what ``make bench`` is for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.pacing import PaceCheck
from bench.runner import QUICK, Measurement
from bench.targets import all_targets

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_quick_run_prints_every_row_and_every_target() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout
    for header in report.HEADERS:
        assert header in table
    rows = {line.split("  ")[0] for line in table.splitlines()}
    for target in all_targets(QUICK.seed_ids, QUICK.concurrencies):
        assert target.label in rows, f"row {target.label!r} missing from:\n{table}"
    verdicts = table.split("\ntargets\n", 1)[1].splitlines()
    assert len(verdicts) == 6
    assert all(line.strip().split()[0] in ("PASS", "FAIL") for line in verdicts)


def test_an_invalid_run_is_never_a_ratio_or_a_pass() -> None:
    base = Measurement("baseline-a", "baseline A", False, events_per_s=1000.0, p50_ms=1, p99_ms=2)
    slow = Measurement(
        "bridge-ws",
        "bridge WS",
        True,
        events_per_s=900.0,
        p50_ms=1,
        p99_ms=3,
        latency_problem="offered rate not reached: 500/s of 1000/s",
        throughput_problem="throughput run: only 10 of 20 events landed within the time limit",
        pace=PaceCheck(1000.0, 500.0, 0.0, 5, 10),
        peak_rss_mb=50.0,
    )
    checks = report.check_targets({m.key: m for m in (base, slow)})
    table = report.render([base, slow], checks, QUICK)
    bridge_line = next(line for line in table.splitlines() if line.startswith("bridge WS"))
    assert "INVALID[1]" in bridge_line
    assert "INVALID[2]" in bridge_line
    assert "0.90x" not in bridge_line
    assert "[1] throughput run: only 10 of 20" in table
    assert not checks[0].passed
    assert "not measurable" in checks[0].detail
    data = report.as_json([base, slow], checks, QUICK)
    assert data["all_pass"] is False
    assert data["rows"][1]["vs_a"] is None  # type: ignore[index]
