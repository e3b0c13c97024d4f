"""``serve()``, what ``openmail-bridge simulator`` runs: start, print where to connect, wait."""

from __future__ import annotations

import asyncio

from bridge.simulator.server import DEMO_API_KEY, Simulator


async def serve(
    *,
    host: str,
    port: int,
    api_key: str | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    stop: asyncio.Event,
) -> None:
    """Run a simulator on ``host:port`` until ``stop`` is set, after printing a banner to stdout.

    The banner is the one place the API key is shown: the user needs it to point a client here.
    The webhook secret is never printed.

    Raises:
        ValueError: a webhook URL without a secret (or the reverse), or an empty API key.
        OSError: the port cannot be bound.
    """
    if (webhook_url is None) != (webhook_secret is None):
        raise ValueError("--webhook-url and --webhook-secret go together")
    key = api_key or DEMO_API_KEY
    simulator = Simulator(api_key=key, webhook_url=webhook_url, webhook_secret=webhook_secret)
    await simulator.start(host, port)
    try:
        base = simulator.base_url
        lines = [
            "OpenMail simulator running",
            f"  WebSocket:  {simulator.ws_url}",
            f"  REST base:  {base}",
            f"  API key:    {key}" + ("  (the fixed demo key)" if api_key is None else ""),
            f"  Inboxes:    {', '.join(simulator.inboxes)}",
            f"  Webhook:    {webhook_url or 'none (set one with POST /_sim/webhook)'}",
            "  Control API (JSON):",
            f'    POST {base}/_sim/events       {{"count": 3}} injects mail',
            f'    POST {base}/_sim/disconnect   {{"code": 1001, "abrupt": false}}',
            f'    POST {base}/_sim/refuse       {{"seconds": 5, "mode": "close"}}',
            f'    POST {base}/_sim/webhook      {{"url": ..., "secret": ..., "inbox_id"?: ...}}',
            f"    GET  {base}/_sim/deliveries   GET {base}/_sim/events   GET {base}/_sim/state",
        ]
        print("\n".join(lines), flush=True)
        await stop.wait()
    finally:
        await simulator.stop()
