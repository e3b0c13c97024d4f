"""``status``: ask a running bridge's admin server for ``/status`` and show it."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from bridge.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from bridge.config import Config


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    listen = config.admin.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else listen.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    request = urllib.request.Request(f"http://{host}:{listen.port}/status")
    if config.admin.token is not None:
        request.add_header("Authorization", f"Bearer {config.admin.token.get()}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(
            f"openmail-bridge: no bridge answers at {host}:{listen.port} ({exc}); is it running?",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(_format_status(status))
    return EXIT_OK


def _format_status(status: dict[str, object]) -> str:
    lines = [f"state: {status.get('state')}"]
    parts = status.get("parts")
    if isinstance(parts, dict):
        lines += [f"  {k}: {v}" for k, v in parts.items()]
    ws = status.get("websocket")
    if isinstance(ws, dict):
        reason = f" ({ws['reason']})" if ws.get("reason") else ""
        lines.append(f"websocket: {ws.get('state')}{reason}")
    lines.append(f"cursor: {status.get('cursor')}")
    lines.append(f"possible gaps: {status.get('possible_gaps')}")
    spool = status.get("spool")
    if isinstance(spool, dict):
        lines.append(f"spool: {spool.get('bytes')} of {spool.get('max_bytes')} bytes")
    sinks = status.get("sinks")
    if isinstance(sinks, dict):
        lines.append("sinks:")
        for name, info in sinks.items():
            if isinstance(info, dict):
                extra = "" if info.get("configured") else " (removed from config)"
                error = f", last error: {info['last_error']}" if info.get("last_error") else ""
                lines.append(
                    f"  {name}: pending {info.get('pending')}, dead {info.get('dead')}"
                    f"{extra}{error}"
                )
    return "\n".join(lines)
