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
    reject_on_upgrade: bool = False,
) -> None:
    """Run a simulator on ``host:port`` until ``stop`` is set, after printing a banner to stdout.

    The banner is the one place the API key is shown: the user needs it to point a client here.
    The webhook secret is never printed. ``reject_on_upgrade`` answers a bad key (a connection
    over the limit) with HTTP 401 (429) on the upgrade instead of a 4001 (4008) close after the
    client's first frame.

    Raises:
        ValueError: a webhook URL without a secret (or the reverse), or an empty API key.
        OSError: the port cannot be bound.
    """
    if (webhook_url is None) != (webhook_secret is None):
        raise ValueError("--webhook-url and --webhook-secret go together")
    key = api_key or DEMO_API_KEY
    simulator = Simulator(
        api_key=key,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        auth_failure="http" if reject_on_upgrade else "close",
    )
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
            "  Bad key:    "
            + (
                "HTTP 401 on the upgrade (429 over the connection limit)"
                if reject_on_upgrade
                else "close 4001 after the client's first frame (4008 over the connection limit)"
            ),
            f"  Files:      GET {base}/v1/attachments/{{message_id}}/{{filename}} (Bearer key)",
            "  Control API (JSON):",
            f'    POST {base}/_sim/events       {{"count": 3}} injects mail',
            f'    POST {base}/_sim/disconnect   {{"code": 1001, "abrupt": false}}',
            f'    POST {base}/_sim/refuse       {{"seconds": 5, "mode": "close"}}',
            f'    POST {base}/_sim/webhook      {{"url": ..., "secret": ..., "inbox_id"?: ...}}',
            f'    POST {base}/_sim/attachments  {{"mode": "serve"|"redirect"|"fail"|"hang"}}',
            f"    GET  {base}/_sim/deliveries   GET {base}/_sim/events   GET {base}/_sim/state",
            f"    GET  {base}/_sim/attachments  (fetches made)",
        ]
        print("\n".join(lines), flush=True)
        await stop.wait()
    finally:
        await simulator.stop()
