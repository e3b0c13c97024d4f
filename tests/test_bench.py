"""Smoke test of the benchmark harness (``bench/``): it runs end to end in its tiny ``--quick`` mode
and prints the whole table, whose ratios and verdicts follow from its own measured figures. No speed
figure is asserted: that is what ``make bench`` is for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import jetstream, report
from bench.measurement import Measurement
from bench.pacing import PaceCheck
from bench.settings import QUICK
from bench.targets import (
    BACKLOG,
    BASE_A,
    BASE_B,
    BASE_C,
    BASE_D,
    BASE_W,
    WS,
    WS_HTTP,
    WS_NATS,
    all_targets,
    is_webhook,
    webhook_key,
)

ROOT = Path(__file__).resolve().parent.parent


def _cells(line: str) -> list[str]:
    """The cells of a table line: columns are padded apart by at least two spaces."""
    return re.split(r" {2,}", line.strip())


def _figure(cell: str) -> float | None:
    """A number as the table prints it (``1,497``, ``0.04x``, ``+3.60``); None for ``-`` or an
    INVALID mark."""
    if cell == "-" or cell.startswith("INVALID["):
        return None
    return float(cell.replace(",", "").removesuffix("x"))


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
    lines = table.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    assert len(rules) == 3, table
    assert _cells(lines[rules[0] + 1]) == list(report.HEADERS)
    targets = all_targets(QUICK)
    grid = [
        dict(zip(report.HEADERS, _cells(line), strict=True))
        for line in lines[rules[1] + 1 : rules[2]]
    ]
    assert [row["configuration"] for row in grid] == [t.label for t in targets], table
    rows = {t.key: {h: _figure(c) for h, c in row.items() if h != "configuration"}
            for t, row in zip(targets, grid, strict=True)}  # fmt: skip

    assert {BASE_C, WS_HTTP, BACKLOG} <= rows.keys()

    # Every figure parses, and each derived one is computed from the measured ones beside it.
    # The JetStream rows are skipped (INVALID, no figure) only where nats-server is missing.
    skipped = set() if jetstream.server_binary() else set(report.NATS_ROWS)
    base_a, base_b, base_c, base_d = rows[BASE_A], rows[BASE_B], rows[BASE_C], rows[BASE_D]
    base_w = rows[BASE_W]
    for key, row in rows.items():
        assert (row["peak RSS MB"] is None) == (key in skipped), key
        speed = row["events/s"]
        for column, base in (
            ("ratio vs A", base_a),
            ("ratio vs B", base_b),
            ("ratio vs C", base_c),
            ("ratio vs D", base_d),
            ("ratio vs W", base_w),
        ):
            if speed is None or base["events/s"] is None:
                assert row[column] is None, (key, column)
            else:
                expected, ref = speed / base["events/s"], base["events/s"]
                # Printed rounded: events/s to the unit (off by up to 0.5 each), ratios to 0.01.
                slack = 0.005 + expected * (0.5 / speed + 0.5 / ref) + 1e-9
                assert row[column] == pytest.approx(expected, abs=slack), (key, column)
        # Added latency: a webhook row's over baseline W (the same signed POSTs), any other's
        # over baseline A.
        p99, p99_base = row["p99 ms"], (base_w if is_webhook(key) else base_a)["p99 ms"]
        if p99 is None or p99_base is None:
            assert row["p99 added ms"] is None, key
        else:
            assert row["p99 added ms"] == pytest.approx(p99 - p99_base, abs=0.011), key
        assert (row["drain s"] is None) == (key != BACKLOG), key
        # The CPU per event at the offered rate: for every row with a run at that rate.
        paced_cpu = row["paced CPU us/event"]
        if key == BACKLOG or key in skipped:
            assert paced_cpu is None, key
        else:
            assert paced_cpu is not None, key
            # /proc counts CPU time in 10 ms ticks: a light baseline may use less than one in
            # the quick run's 0.2 s; a bridge never does.
            assert paced_cpu > 0 if key.startswith("bridge-") else paced_cpu >= 0, key

    # The backlog row: no latency run; its events/s is the backlog over the drain time, both
    # printed rounded (to the unit, to 0.01 s).
    backlog = rows[BACKLOG]
    assert backlog["p50 ms"] is None
    assert backlog["p99 ms"] is None
    drain, drained = backlog["drain s"], backlog["events/s"]
    assert drain is not None
    assert drained is not None
    slowest, fastest = QUICK.backlog / (drain + 0.005), QUICK.backlog / max(drain - 0.005, 1e-9)
    assert slowest - 0.5 <= drained <= fastest + 0.5, (drain, drained)

    # Each verdict is the target applied to the table's own figures.
    verdicts = [line.split(maxsplit=1) for line in table.split("\ntargets\n", 1)[1].splitlines()]
    assert len(verdicts) == 10
    for (verdict, name), key, base, want in zip(
        verdicts[:4],
        (WS, WS, WS, WS_HTTP),
        (base_a, base_b, base_b, base_c),
        (
            report.THROUGHPUT_VS_A,
            report.THROUGHPUT_FLOOR_VS_B,
            report.THROUGHPUT_VS_B,
            report.HTTP_VS_C,
        ),
        strict=True,
    ):
        measured, base_speed = rows[key]["events/s"], base["events/s"]
        passed = measured is not None and base_speed is not None and measured / base_speed >= want
        assert verdict == ("PASS" if passed else "FAIL"), name
    assert verdicts[1][1].startswith(
        "bridge WS events/s >= 0.3 x baseline B: quickstart listener (floor)"
    )
    assert verdicts[3][1].startswith("bridge WS -> HTTP events/s >= 1.0 x baseline C")
    verdict, name = verdicts[4]
    assert name.startswith("p99 added latency <= 5 ms at 1,000 events/s, webhook c=16:")
    added = rows[webhook_key(16)]["p99 added ms"]
    assert verdict == ("PASS" if added is not None and added <= report.MAX_ADDED_P99_MS else "FAIL")
    bridge_rss = [row["peak RSS MB"] for key, row in rows.items() if key.startswith("bridge-")]
    passed = all(v is not None and v <= report.MAX_RSS_MB for v in bridge_rss)
    assert verdicts[6][0] == ("PASS" if passed else "FAIL")
    verdict, name = verdicts[9]
    assert name.startswith("bridge WS -> JetStream events/s >= 0.5 x baseline D")
    measured, base_speed = rows[WS_NATS]["events/s"], base_d["events/s"]
    passed = (
        measured is not None
        and base_speed is not None
        and measured / base_speed >= report.NATS_VS_D
    )
    assert verdict == ("PASS" if passed else "FAIL"), name
    assert all(verdict in ("PASS", "FAIL") for verdict, _ in verdicts)


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
    checks = report.check_targets({m.key: m for m in (base, slow)}, QUICK.rate)
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
