"""``trigger``: have a running bridge send a test event to one sink, then wait for that delivery.

Like OpenMail's "Test webhook" button: the bridge spools a realistic ``message.received``
(``evt_test_<uuid>``) for the named sink alone, routes not asked, and delivers it by that sink's
rules. This command prints the event id and the outcome: exit 0 delivered, 1 dead or still pending
at ``--timeout``, 2 an unknown sink, a usage or a config problem. The admin server's address and
token are found as ``status`` finds them.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Final

from bridge.cli.exit_codes import EXIT_FAILURE, EXIT_OK, refuse
from bridge.cli.status import Refused, Target, foreign, refusal, target, unreachable
from bridge.printable import printable

_REQUEST_TIMEOUT: Final = 5.0
_FIRST_POLL: Final = 0.05
_MAX_POLL: Final = 0.5


def cmd_trigger(args: argparse.Namespace) -> int:
    try:
        where = target(args)
        status, answer = request(where, "/trigger", {"sink": args.sink})
    except Refused as exc:
        return refuse(str(exc), exc.code)
    known = answer.get("sinks")
    if status == 404 and isinstance(known, list):
        sinks = ", ".join(printable(s) for s in known) or "(none)"
        return refuse(f"the bridge has no sink named {args.sink!r}; its sinks: {sinks}")
    event_id = answer.get("event_id")
    if status != 202 or not isinstance(event_id, str) or not event_id.isprintable():
        # A bridge refuses with JSON naming why; anything else may not be a bridge at all.
        said = f"answered HTTP {status} to /trigger"
        if (other := foreign(where, said)) is not None:
            return refuse(str(other), other.code)
        if status in (404, 405):
            older = f"the bridge at {where.shown} has no /trigger: it is older than this command"
            return refuse(older, EXIT_FAILURE)
        return refuse(f"the bridge did not send a test event: {_said(status, answer)}", 1)
    print(f"sent test event {event_id} to sink {args.sink}", flush=True)
    return _wait(where, event_id, args.timeout)


def _wait(where: Target, event_id: str, timeout: float) -> int:
    """Ask for the delivery's outcome until it is delivered or dead, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: its wait is the pause between two questions
    pause, attempts = _FIRST_POLL, 0
    while True:
        try:
            status, outcome = request(where, f"/trigger/{event_id}")
        except Refused as exc:
            return refuse(str(exc), exc.code)
        if status != 200:
            return refuse(f"cannot follow {event_id}: {_said(status, outcome)}", EXIT_FAILURE)
        state = outcome.get("state")
        if state == "delivered":
            print(f"delivered: sink {outcome['sink']} accepted {event_id}")
            return EXIT_OK
        if state == "dead":
            error = printable(outcome.get("error") or "no error recorded")
            print(
                f"dead: sink {outcome['sink']} dead-lettered {event_id} after "
                f"{_attempts(outcome)}: {error} "
                f"(see: openmail-bridge dlq list --sink {outcome['sink']})"
            )
            return EXIT_FAILURE
        tried = _count(outcome)
        if tried > attempts:  # each failed attempt once, as the bridge records it
            attempts = tried
            print(
                f"attempt {tried} failed: {printable(outcome.get('error') or 'no error recorded')}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"timeout: {event_id} is still pending for sink {outcome['sink']} after "
                f"{timeout:g}s ({_attempts(outcome)} failed); the bridge keeps retrying it "
                "by the sink's rules"
            )
            return EXIT_FAILURE
        tick.wait(min(pause, left))
        pause = min(pause * 2, _MAX_POLL)


def _count(outcome: Mapping[str, object]) -> int:
    value = outcome.get("attempts")
    return value if isinstance(value, int) else 0


def _attempts(outcome: Mapping[str, object]) -> str:
    count = _count(outcome)
    return f"{count} attempt{'' if count == 1 else 's'}"


def _said(status: int, answer: Mapping[str, object]) -> str:
    return printable(f"HTTP {status} {answer.get('error') or ''}".rstrip())


def request(
    where: Target, path: str, body: Mapping[str, object] | None = None
) -> tuple[int, dict[str, object]]:
    """The HTTP status and JSON answer of the admin server at ``where`` for ``path`` (a POST of
    ``body`` when given, else a GET).

    Raises:
        Refused: no bridge answers (exit 1); it wants a token it was not given, or refuses private
            paths on its address (exit 2); it refuses this client's address for a while (exit 1).
    """
    data = json.dumps(body).encode() if body is not None else None
    # The scheme is http(s): Target's URL comes from admin_url or a checked --admin.
    req = urllib.request.Request(f"{where.url}{path}", data=data)  # noqa: S310
    req.add_header("Content-Type", "application/json")
    if where.token:
        req.add_header("Authorization", f"Bearer {where.token}")
    try:
        with urllib.request.urlopen(req, timeout=_REQUEST_TIMEOUT) as response:  # noqa: S310
            return response.status, _json_object(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 429):  # the token or the address refused: no answer to read
            raise refusal(exc, where, path) from None
        return exc.code, _json_object(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise unreachable(where, reason) from None


def _json_object(raw: bytes) -> dict[str, object]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
