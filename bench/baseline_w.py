"""Baseline W: the webhook receiver of OpenMail's webhook setup guide, writing each event to a file.

The guide's Python receiver (Flask) written with aiohttp, the server the bridge uses, so that the
two differ only in what the bridge does: read the raw body, verify ``X-Signature`` with
``hmac.compare_digest``, check the timestamp's age, ``json.loads`` the body, append the event as one
JSON line to a line-buffered file (not fsynced, not de-duplicated) and answer 200. What every
webhook row's latency is measured against: the same signed requests, from the same load generator,
landing in a file the same way.

Usage: ``python -m bench.baseline_w SECRET FILE``; it listens on 127.0.0.1 on a free port and
reports it on stderr as ``{"event": "webhook.listening", "listen": "127.0.0.1:PORT"}``.
"""

import asyncio
import hashlib
import hmac
import json
import sys
import time

from aiohttp import web


def verify_webhook(secret: str, payload: bytes, timestamp: str, signature: str) -> bool:
    message = f"{timestamp}.{payload.decode()}".encode()
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, expected)


async def main(secret: str, path: str) -> None:
    with open(path, "a", buffering=1, encoding="utf-8") as out:  # noqa: ASYNC230

        async def webhook(request: web.Request) -> web.Response:
            payload = await request.read()
            timestamp = request.headers.get("X-Timestamp", "")
            signature = request.headers.get("X-Signature", "")
            if not verify_webhook(secret, payload, timestamp, signature):
                return web.Response(status=400)
            if abs(time.time() - int(timestamp)) > 300:
                return web.Response(status=400)
            data = json.loads(payload.decode())
            if data.get("event") == "message.received":
                out.write(json.dumps(data) + "\n")
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/webhooks", webhook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(json.dumps({"event": "webhook.listening", "listen": f"127.0.0.1:{port}"}),
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            await asyncio.Event().wait()  # until the harness stops it (SIGTERM)
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
