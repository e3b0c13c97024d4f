"""``demo``: the offline tour (simulator, bridge, an outage, the webhook fallback)."""

from __future__ import annotations

import argparse
import asyncio

from bridge.demo import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(keep_running=args.keep_running))
