"""Baseline B: the Python listener of OpenMail's WebSocket quickstart, writing each event to a file.

This is the quickstart's minimal example (``websockets``, ``json.loads`` per frame) with its
``print`` calls for an event replaced by appending the event as one JSON line to a file: what a user
would write instead of running the bridge. Adaptations, and nothing else:

- ``additional_headers=``: websockets 14 renamed the quickstart's ``extra_headers=``;
- the URL and the output file come from the command line (``python -m bench.baseline_b URL FILE``);
- the file is line-buffered, so each event is in the file (not fsynced, not de-duplicated) when
  its handler returns.
"""

import asyncio
import json
import os
import sys

from websockets import connect


async def main(uri: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {os.environ.get('OPENMAIL_API_KEY', 'om_bench')}"}

    with open(path, "a", buffering=1, encoding="utf-8") as out:  # noqa: ASYNC230
        async with connect(uri, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe"}))

            async for raw in ws:
                event = json.loads(raw)

                if event.get("type") == "subscribed":
                    print(
                        "Subscribed — inboxes:", event["inbox_ids"], "events:",
                        event["event_types"], file=sys.stderr,
                    )  # fmt: skip
                elif event.get("event") == "message.received":
                    out.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
