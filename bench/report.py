"""The table, the targets marked PASS/FAIL, and the same as JSON.

Ratios are taken only between valid numbers of the same invocation; an INVALID cell is never part
of a ratio or a PASS. Each INVALID cell points to a footnote with the reason.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from bench.runner import Measurement, Settings

THROUGHPUT_VS_A = 0.5
THROUGHPUT_VS_B = 1.0
MAX_ADDED_P99_MS = 5.0
MAX_RSS_MB = 80.0
SEEDED_THROUGHPUT = 0.8
"""With the dedup record pre-filled, throughput within 20% of the empty store."""
SEEDED_RSS_TOLERANCE = 0.10
"""... and peak RSS unchanged: no more than 10% above the empty store's."""
BASE_A, BASE_B, WS, WS_SEEDED = "baseline-a", "baseline-b", "bridge-ws", "bridge-ws-seeded"


@dataclass(frozen=True, slots=True)
class Check:
    target: str
    passed: bool
    detail: str

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def added_p99(row: Measurement, base: Measurement | None) -> float | None:
    """p99 latency above baseline A's, from valid numbers only."""
    if base is None or row.p99 is None or base.p99 is None:
        return None
    return row.p99 - base.p99


def _why(row: Measurement | None, problem: str | None) -> str:
    if row is None:
        return "not measured in this run"
    return f"not measurable: {row.label}: {problem}"


def _throughput_ratio(rows: dict[str, Measurement], key: str, base: str, want: float) -> Check:
    name = f"bridge WS events/s >= {want:g} x {rows[base].label if base in rows else base}"
    row, ref = rows.get(key), rows.get(base)
    value = ratio(row.throughput if row else None, ref.throughput if ref else None)
    if value is None:
        bad = row if row is None or row.throughput is None else ref
        return Check(name, False, _why(bad, bad.throughput_problem if bad else None))
    assert row is not None
    assert ref is not None
    detail = f"{value:.2f} x ({row.throughput:,.0f} vs {ref.throughput:,.0f} events/s)"
    return Check(name, value >= want, detail)


def _every_bridge_row(
    rows: dict[str, Measurement],
    name: str,
    value: Callable[[Measurement], float | None],
    problem: Callable[[Measurement], str | None],
    ok: Callable[[float], bool],
    unit: str,
) -> Check:
    bridge = [r for r in rows.values() if r.is_bridge]
    parts, passed = [], bool(bridge)
    for row in bridge:
        v = value(row)
        if v is None:
            passed = False
            parts.append(f"{row.key} INVALID ({problem(row) or 'no value'})")
        else:
            passed &= ok(v)
            parts.append(f"{row.key} {v:.1f} {unit}{'' if ok(v) else ' (over)'}")
    return Check(name, passed, "; ".join(parts) or "no bridge row measured")


def check_targets(rows: dict[str, Measurement]) -> list[Check]:
    base_a = rows.get(BASE_A)
    checks = [
        _throughput_ratio(rows, WS, BASE_A, THROUGHPUT_VS_A),
        _throughput_ratio(rows, WS, BASE_B, THROUGHPUT_VS_B),
        _every_bridge_row(
            rows,
            f"p99 added latency <= {MAX_ADDED_P99_MS:g} ms at the offered rate (every bridge row)",
            lambda r: added_p99(r, base_a),
            lambda r: r.latency_problem or (base_a.latency_problem if base_a else "no baseline A"),
            lambda v: v <= MAX_ADDED_P99_MS,
            "ms",
        ),
        _every_bridge_row(
            rows,
            f"peak RSS <= {MAX_RSS_MB:g} MB (every bridge row)",
            lambda r: r.peak_rss_mb,
            lambda r: r.throughput_problem,
            lambda v: v <= MAX_RSS_MB,
            "MB",
        ),
    ]
    seeded, empty = rows.get(WS_SEEDED), rows.get(WS)
    label = seeded.label.removeprefix("bridge WS, ") if seeded else "stored ids"
    name = f"with {label}: events/s within {1 - SEEDED_THROUGHPUT:.0%} of the empty store"
    value = ratio(seeded.throughput if seeded else None, empty.throughput if empty else None)
    if value is None:
        bad = seeded if seeded is None or seeded.throughput is None else empty
        checks.append(Check(name, False, _why(bad, bad.throughput_problem if bad else None)))
    else:
        checks.append(Check(name, value >= SEEDED_THROUGHPUT, f"{value:.2f} x the empty store"))
    name = f"with {label}: peak RSS unchanged (within {SEEDED_RSS_TOLERANCE:.0%})"
    value = ratio(seeded.peak_rss_mb if seeded else None, empty.peak_rss_mb if empty else None)
    if value is None:
        checks.append(Check(name, False, "peak RSS not measured"))
    else:
        assert seeded is not None
        assert empty is not None
        detail = f"{seeded.peak_rss_mb:.1f} vs {empty.peak_rss_mb:.1f} MB"
        checks.append(Check(name, value <= 1 + SEEDED_RSS_TOLERANCE, detail))
    return checks


# --- rendering -----------------------------------------------------------------------------------

HEADERS = (
    "configuration", "events/s", "ratio vs A", "ratio vs B", "p50 ms", "p99 ms",
    "p99 added vs A ms", "peak RSS MB",
)  # fmt: skip


class _Footnotes:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"INVALID[{self.reasons.index(reason) + 1}]"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _cells(row: Measurement, rows: dict[str, Measurement], notes: _Footnotes) -> list[str]:
    base_a, base_b = rows.get(BASE_A), rows.get(BASE_B)
    if row.throughput_problem:
        speed = [notes.mark(row.throughput_problem), "-", "-"]
    else:
        speed = [
            _fmt(row.events_per_s, ",.0f"),
            _fmt(ratio(row.throughput, base_a.throughput if base_a else None), ".2f", "x"),
            _fmt(ratio(row.throughput, base_b.throughput if base_b else None), ".2f", "x"),
        ]
    if row.latency_problem:
        mark = notes.mark(row.latency_problem)
        latency = [mark, mark, "-"]
    else:
        latency = [
            _fmt(row.p50_ms, ".2f"),
            _fmt(row.p99_ms, ".2f"),
            _fmt(added_p99(row, base_a), "+.2f"),
        ]
    return [row.label, *speed, *latency, _fmt(row.peak_rss_mb, ".1f")]


def _grid(lines: Iterable[list[str]]) -> list[str]:
    lines = list(lines)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def render(rows: list[Measurement], checks: list[Check], settings: Settings) -> str:
    by_key = {r.key: r for r in rows}
    notes = _Footnotes()
    body = [_cells(r, by_key, notes) for r in rows]
    grid = _grid([list(HEADERS), *body])
    rule = "-" * max(len(line) for line in grid)
    out = [
        f"openmail-bridge benchmark: latency at {settings.rate:,.0f} events/s offered for "
        f"{settings.paced_seconds:g}s; events/s from bursts of {settings.burst_baseline:,} "
        f"(baselines), {settings.burst_bridge:,} (bridge WS), {settings.burst_webhook:,} (webhook) "
        f"events; {os.cpu_count()} CPUs, Python {platform.python_version()}",
        rule,
        grid[0],
        rule,
        *grid[1:],
        rule,
    ]
    out += [f"[{i}] {reason}" for i, reason in enumerate(notes.reasons, 1)]
    out += [f"note: {r.key}: {n}" for r in rows for n in r.notes]
    if checks:
        out += ["", "targets"]
        out += [f"  {c.verdict}  {c.target}: {c.detail}" for c in checks]
    return "\n".join(out)


def as_json(rows: list[Measurement], checks: list[Check], settings: Settings) -> dict[str, object]:
    by_key = {r.key: r for r in rows}
    base_a, base_b = by_key.get(BASE_A), by_key.get(BASE_B)
    return {
        "settings": asdict(settings),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": [
            r.as_dict()
            | {
                "vs_a": ratio(r.throughput, base_a.throughput if base_a else None),
                "vs_b": ratio(r.throughput, base_b.throughput if base_b else None),
                "p99_added_ms": added_p99(r, base_a),
            }
            for r in rows
        ],
        "targets": [asdict(c) | {"verdict": c.verdict} for c in checks],
        "all_pass": all(c.passed for c in checks),
    }
