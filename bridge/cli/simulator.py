"""``simulator``: a local OpenMail stand-in (WebSocket + signed webhooks) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bridge import logs
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from bridge.simulator import serve


def cmd_simulator(args: argparse.Namespace) -> int:
    logs.configure("info", "auto")
    if bool(args.webhook_url) != bool(args.webhook_secret):
        print("openmail-bridge: --webhook-url and --webhook-secret go together", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            reject_on_upgrade=args.reject_on_upgrade,
            stop=stop,
        )

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"openmail-bridge: simulator cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
