"""``tail``: print what happens to events in a running bridge as it happens, one line each:
accepted, duplicate, delivered, retrying, dead (``--json``: one record per line, for ``jq``).

It reads the admin server's ``/api/stream`` (Server-Sent Events), found as ``status`` finds it
(``--admin`` / ``--token`` / ``$OPENMAIL_BRIDGE_ADMIN_TOKEN``, else the config's ``admin.*``). The
filters go to the bridge as query parameters and are applied here too. When no bridge answers at
the first connection the command exits 1; when the bridge goes away later (a restart) it says so
on stderr and reconnects with backoff. Ctrl-C ends it with exit 0.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Mapping
from typing import Final, TextIO

from bridge.activity import FIELDS, Filter, Kind
from bridge.backoff import full_jitter
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, refuse
from bridge.cli.status import Refused, Target, foreign, refusal, target, unreachable
from bridge.printable import printable
from bridge.stream import KEEPALIVE

CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 2 * KEEPALIVE + 5
"""Silence after which the bridge is taken for gone: it sends a keepalive every KEEPALIVE s."""
_ERROR_BYTES: Final = 65536
"""Most of a refusal's body read: the bridge's names its sinks."""
RECONNECT_INITIAL: Final = 0.25
RECONNECT_MAX: Final = 5.0
COLORS: Final = {
    Kind.ACCEPTED: "36",  # cyan
    Kind.DUPLICATE: "2",  # dim
    Kind.DELIVERED: "32",  # green
    Kind.RETRYING: "33",  # yellow
    Kind.DEAD: "1;31",  # bold red
}
_KIND_WIDTH: Final = max(len(kind) for kind in Kind)


def cmd_tail(args: argparse.Namespace) -> int:
    wanted = Filter.of(
        {"inbox": args.inbox, "type": args.type, "source": args.source, "sink": args.sink}
    )
    color = not args.json and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    try:
        where = target(args)
        return Tail(where, wanted, Printer(as_json=args.json, color=color)).run()
    except Refused as exc:
        return refuse(str(exc), exc.code)
    except KeyboardInterrupt:
        return EXIT_OK
    # A reader that has had enough (`| head`) raises BrokenPipeError: main ends every command
    # the same way then (``pipes``).


# --- output ----------------------------------------------------------------------------------


def human(record: Mapping[str, object], *, color: bool) -> str:
    """One record as a line: time, kind, event id, source, inbox, type, then sink, attempt and
    error when it has them."""
    ts = record.get("ts")
    at = float(ts) if isinstance(ts, int | float) else time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    kind = printable(record.get("kind"))
    shown = kind.ljust(_KIND_WIDTH)
    if color and kind in COLORS:
        shown = f"\x1b[{COLORS[Kind(kind)]}m{shown}\x1b[0m"
    parts = [stamp, shown]
    parts += [printable(record.get(key) or "-") for key in ("event_id", "source", "inbox_id")]
    parts.append(printable(record.get("type") or "-"))
    for key in ("sink", "attempt", "error"):
        value = record.get(key)
        if value is not None and value != "":
            parts.append(f"{key}={printable(value)}")
    return " ".join(parts)


class Printer:
    """Prints records on stdout (human lines, or ``--json``) and notes on stderr."""

    def __init__(
        self,
        *,
        as_json: bool,
        color: bool,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.as_json = as_json
        self.color = color
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def record(self, record: Mapping[str, object]) -> None:
        if self.as_json:
            line = json.dumps({key: record.get(key) for key in FIELDS})
        else:
            line = human(record, color=self.color)
        print(line, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"openmail-bridge: {text}", file=self.err, flush=True)


# --- the stream ------------------------------------------------------------------------------


class SseParser:
    """Server-Sent Events, line by line: ``feed`` gives (event, data) at the end of each event."""

    __slots__ = ("_data", "_event")

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return (event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None  # a comment: the keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


class Gone(Exception):
    """The stream stopped: the bridge closed it, the connection broke, or it fell silent."""


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def open_stream(where: Target, wanted: Filter) -> http.client.HTTPResponse:
    """The bridge's ``/api/stream``, its headers read.

    Raises:
        Refused: no bridge answers (exit 1); it wants a token, refuses the path, or knows no
            such sink (exit 2); it answers something else (exit 1).
    """
    url = urllib.parse.urlsplit(where.url)
    connection_type = (
        http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_type(url.hostname or "", url.port, timeout=CONNECT_TIMEOUT)
    path = f"{url.path}/api/stream"
    if wanted.query:
        path += "?" + urllib.parse.urlencode(wanted.query)
    headers = {"Accept": "text/event-stream"}
    if where.token:
        headers["Authorization"] = f"Bearer {where.token}"
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise unreachable(where, _reason(exc)) from None
    if response.status == 400:
        refused = _bad_filter(where, wanted, response.read(_ERROR_BYTES))
    elif response.status != 200:
        error = urllib.error.HTTPError(
            f"{where.url}{path}", response.status, response.reason, response.headers, response
        )
        refused = refusal(error, where, "/api/stream")
    elif response.headers.get_content_type() != "text/event-stream":
        said = "answered /api/stream with something other than an event stream"
        refused = foreign(where, said) or Refused(f"the server at {where.shown} {said}", 1)
    else:
        refused = None
    if refused is not None:
        connection.close()
        raise refused
    if connection.sock is not None:
        connection.sock.settimeout(READ_TIMEOUT)
    return response


def _bad_filter(where: Target, wanted: Filter, body: bytes) -> Refused:
    """The bridge refused the filters (400): a sink it does not run, a source it never names.
    A usage error (exit 2), as ``trigger`` says of an unknown sink."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return Refused(f"the server at {where.shown} refused the request (HTTP 400)", EXIT_CONFIG)
    given = wanted.query
    for name, listed in (("sink", "sinks"), ("source", "sources")):
        known = answer.get(listed)
        if isinstance(known, list) and name in given:
            shown = ", ".join(printable(k) for k in known) or "(none)"
            return Refused(
                f"the bridge at {where.shown} has no {name} named {given[name]!r}; "
                f"its {listed}: {shown}",
                EXIT_CONFIG,
            )
    error = printable(answer.get("error") or "HTTP 400")
    return Refused(f"the bridge at {where.shown} refused the filters: {error}", EXIT_CONFIG)


class Tail:
    """Follows one bridge's stream, printing what ``wanted`` lets through, reconnecting."""

    def __init__(self, where: Target, wanted: Filter, printer: Printer) -> None:
        self.where = where
        self.wanted = wanted
        self.printer = printer

    def run(self) -> int:
        """Follow until interrupted (KeyboardInterrupt) or refused. Raises Refused."""
        response = open_stream(self.where, self.wanted)
        shown = self.where.shown
        self.printer.note(f"following {shown} (Ctrl-C stops)")
        while True:
            try:
                self._follow(response)
            except Gone as exc:
                self.printer.note(f"the bridge at {shown} went away ({exc}); reconnecting")
            finally:
                response.close()
            response = self._reconnect()
            self.printer.note(f"reconnected to {shown}; events in between are not shown")

    def _follow(self, response: http.client.HTTPResponse) -> None:
        """Print the stream's records until it stops. Raises Gone."""
        parser = SseParser()
        while True:
            try:
                raw = response.readline()
            except TimeoutError:
                raise Gone(f"nothing heard for {READ_TIMEOUT:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise Gone(_reason(exc)) from None
            if not raw:
                raise Gone("it closed the stream")
            event = parser.feed(raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r"))
            if event is not None:
                self._handle(*event)

    def _handle(self, event: str, data: str) -> None:
        try:
            value = json.loads(data)
        except ValueError:
            return
        if not isinstance(value, dict):
            return
        if event == "activity" and self.wanted.matches(value):
            self.printer.record(value)
        elif event == "lost":
            self.printer.note(
                f"{value.get('count')} events not shown: this reader fell behind the bridge"
            )

    def _reconnect(self) -> http.client.HTTPResponse:
        """The stream again, once the bridge answers; waits with backoff in between. Raises
        Refused when the bridge answers but refuses (a token it no longer takes)."""
        pause = threading.Event()  # never set: its wait is the backoff, cut short by Ctrl-C
        attempt = 0
        while True:
            attempt += 1
            pause.wait(full_jitter(attempt, RECONNECT_INITIAL, RECONNECT_MAX))
            try:
                return open_stream(self.where, self.wanted)
            except Refused as exc:
                if exc.code != EXIT_FAILURE:
                    raise
