"""``python -m bench``: run every configuration, print the table and the targets.

Options: ``--quick`` (tiny counts, for the smoke test), ``--backlog N`` (events in the backlog-drain
row, default 200,000), ``--json`` (machine-readable, on stdout),
``--only KEY,...`` (a subset of rows), ``--keep``/``--workdir`` (leave the run's files: configs,
outputs, client logs), ``--profile DIR`` (the bridge WebSocket row only, under pyinstrument).
Progress goes to stderr. Exit status 0 once the table is printed, whether targets pass or not.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import report
from bench.runner import log, run_all
from bench.settings import FULL, QUICK, Settings
from bench.targets import BridgeWs, Target, all_targets
from bridge import logs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the harness only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--only", metavar="KEY,...", help="run only these rows (see --list)")
    parser.add_argument("--list", action="store_true", help="list the row keys and exit")
    parser.add_argument(
        "--backlog", type=int, metavar="N", help=f"events in the backlog row ({FULL.backlog:,})"
    )
    parser.add_argument("--workdir", type=Path, help="where run files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run files")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="profile the bridge WS row (pyinstrument)"
    )
    return parser.parse_args(argv)


def select(targets: list[Target], only: str | None) -> list[Target]:
    if not only:
        return targets
    wanted = {key.strip() for key in only.split(",") if key.strip()}
    unknown = wanted - {t.key for t in targets}
    if unknown:
        raise SystemExit(f"python -m bench: unknown row(s): {', '.join(sorted(unknown))}")
    return [t for t in targets if t.key in wanted]


def render_profile(session: Path) -> list[Path]:
    """Text and HTML renderings of a pyinstrument session file."""
    outputs = []
    for renderer, suffix in (("text", ".txt"), ("html", ".html")):
        out = session.with_suffix(suffix)
        subprocess.run(
            [sys.executable, "-m", "pyinstrument", "--load", str(session), "-r", renderer,
             "-o", str(out)],
            check=True, timeout=120,
        )  # fmt: skip
        outputs.append(out)
    return outputs


async def run_table(args: argparse.Namespace, settings: Settings, root: Path) -> None:
    targets = select(all_targets(settings), args.only)
    rows = await run_all(targets, settings, root)
    checks = report.check_targets({r.key: r for r in rows}, settings.rate)
    if args.json:
        print(json.dumps(report.as_json(rows, checks, settings), indent=2))
    else:
        print(report.render(rows, checks, settings))


def run_profile(out_dir: Path, settings: Settings, root: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    session = out_dir.resolve() / "bridge-ws.pyisession"
    rows = asyncio.run(run_all([BridgeWs(profile=session)], settings, root))
    for path in render_profile(session):
        log(f"profile written: {path}")
    log("numbers measured under the profiler are slower than the real ones")
    print(report.render(rows, [], settings))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure("warning", "console")  # bridge code used here (seeding) logs to stderr only
    settings = QUICK if args.quick else FULL
    if args.backlog is not None:
        if args.backlog < 1:
            raise SystemExit("python -m bench: --backlog must be at least 1")
        settings = dataclasses.replace(settings, backlog=args.backlog)
    if args.list:
        for target in all_targets(settings):
            print(f"{target.key}\t{target.label}")
        return 0
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"python -m bench: --workdir {args.workdir} is not empty")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="openmail-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.profile is not None:
            run_profile(args.profile, settings, root)
        else:
            asyncio.run(run_table(args, settings, root))
        return 0
    finally:
        if args.keep or args.workdir:
            log(f"run files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
