"""``status``: ask a running bridge's admin server for ``/status`` and show it (``--watch``: again
and again until interrupted).

The address and token come from ``--admin`` / ``--token`` / ``$OPENMAIL_BRIDGE_ADMIN_TOKEN``, else
from the config, read leniently: only ``admin.*`` matters, and ``admin.token`` is needed only when
the bridge asks for one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Final

from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, refuse
from bridge.cli.operator_config import ADMIN_INSTEAD, operator_config, require
from bridge.cli.options import TOKEN_ENV
from bridge.cli.status_text import format_status
from bridge.config import ADMIN, Listen
from bridge.printable import printable

_TIMEOUT: Final = 5.0
_HEALTHZ_BYTES: Final = 4096
"""Read of a ``/healthz`` answer: a bridge's is a few dozen bytes."""
_CLEAR: Final = "\x1b[H\x1b[2J"


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    """The admin server's base URL, e.g. ``http://127.0.0.1:9464``."""
    token: str | None
    token_problem: str | None
    """Why the config's admin.token could not be read (it names the variable)."""
    from_config: bool = False
    """The URL is the config's admin.listen, not ``--admin``."""

    @property
    def shown(self) -> str:
        """The URL as messages show it (``--admin`` accepts no credential, so it holds none)."""
        return self.url.removeprefix("http://")


class Refused(Exception):
    """The bridge answered, but not with a report; ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def admin_url(listen: Listen) -> str:
    """The URL that reaches an admin server listening on ``listen`` from this host."""
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else listen.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    return f"http://{host}:{listen.port}"


def _given_url(text: str) -> str:
    """``--admin``: a URL, or a bare ``host:port``. Raises Refused for another scheme, and for a
    URL with user-info, a query or a fragment: the admin server reads its bearer token from a
    header only, and what the URL holds beside the address is never shown back."""
    authority = re.split("[/?#]", text.split("://", 1)[-1], maxsplit=1)[0]
    if "@" in authority:
        raise Refused(
            "--admin: a user name or password in the URL is refused (not shown here): the admin "
            f"server takes a bearer token; give the address alone, and the token with --token "
            f"or ${TOKEN_ENV}",
            EXIT_CONFIG,
        )
    address = re.split("[?#]", text, maxsplit=1)[0]
    shown = address if "://" in address else f"http://{address}"
    shown = shown.rstrip("/")
    if address != text:
        raise Refused(
            f"--admin {shown}: a query (?...) or fragment (#...) in the URL is refused (not "
            f"shown here): give the address alone, and the token with --token or ${TOKEN_ENV}",
            EXIT_CONFIG,
        )
    try:
        parts = urllib.parse.urlsplit(shown)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError as exc:  # a port that is not a number, or out of range
        raise Refused(f"--admin {shown}: not a URL ({exc})", EXIT_CONFIG) from None
    if not usable:
        raise Refused(f"--admin {shown}: not an http(s) URL with a host", EXIT_CONFIG)
    return shown


def target(args: argparse.Namespace) -> Target:
    """Where to ask, and with which token. Raises ConfigError, or Refused (a usage error)."""
    if args.admin is not None and not args.admin.strip():
        # Taken for "not given", it would quietly ask the bridge of whatever config is found.
        raise Refused(
            "--admin is empty: give the admin server's URL (e.g. http://127.0.0.1:9464), or "
            "leave --admin out to read admin.listen from the config",
            EXIT_CONFIG,
        )
    token = args.token or os.environ.get(TOKEN_ENV) or None
    config = operator_config(args, needed=args.admin is None, instead=ADMIN_INSTEAD)
    if config is None or (args.admin is not None and config.problems.get(ADMIN)):
        # --admin says where; a broken admin section then only costs its token.
        return Target(_given_url(args.admin), token, None)
    if args.admin is None:
        require(config, ADMIN, ADMIN_INSTEAD)
        if not config.admin.enabled:
            raise Refused(
                f"admin.enabled is false in {config.source}: there is no admin server to ask",
                EXIT_CONFIG,
            )
    url = _given_url(args.admin) if args.admin else admin_url(config.admin.listen)
    if token is None and config.admin.token is not None:
        token = config.admin.token.get()
    problem = None if token else config.token_problem
    return Target(url, token, problem, from_config=args.admin is None)


def fetch(where: Target) -> dict[str, object]:
    """``/status`` of the bridge at ``where``. Raises Refused."""
    # The scheme is http(s): admin_url builds one, _given_url accepts no other.
    request = urllib.request.Request(f"{where.url}/status")  # noqa: S310
    if where.token:
        request.add_header("Authorization", f"Bearer {where.token}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise refusal(exc, where, "/status") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise unreachable(where, reason) from None
    try:
        report = json.loads(body)
    except ValueError:  # something answers there, but not with JSON: not a bridge's /status
        report = None
    if not isinstance(report, dict):
        said = "answered something other than a report"
        raise foreign(where, said) or Refused(f"the server at {where.shown} {said}", EXIT_FAILURE)
    return report


def is_bridge(where: Target) -> bool | None:
    """Whether an openmail-bridge admin server answers at ``where``: every version answers its
    public ``/healthz`` with 200 ``{"status": "ok", "time": ...}``, whatever its state and token.
    None when that cannot be told (the question goes unanswered), so that nothing is guessed."""
    request = urllib.request.Request(f"{where.url}/healthz")  # noqa: S310 (an http(s) URL)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310
            body = response.read(_HEALTHZ_BYTES)
    except urllib.error.HTTPError as exc:
        # No /healthz there; another refusal (a proxy's 401, a 502) tells nothing either way.
        return False if exc.code in (404, 405) else None
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(answer, dict)
        and answer.get("status") == "ok"
        and isinstance(answer.get("time"), int | float)
    )


def foreign(where: Target, said: str) -> Refused | None:
    """When what answers at ``where`` is not an openmail-bridge admin server (a webhook listener,
    another program), exit 1 saying so; ``said`` is what it did (``answered HTTP 404 to
    /status``). None when it is one, or when that cannot be told."""
    if is_bridge(where) is not False:
        return None
    where_from = (
        "the config's admin.listen names this address: is another program listening there?"
        if where.from_config
        else "give --admin the bridge's admin server (its admin.listen), not its webhook listener"
    )
    return Refused(
        f"the server at {where.shown} {said}: it is not an openmail-bridge admin server (its "
        f"/healthz does not answer as a bridge's does); {where_from}",
        EXIT_FAILURE,
    )


def unreachable(where: Target, reason: object) -> Refused:
    """No server answers at ``where`` (exit 1). When the address is the config's, the bridge may
    still be on the one it started with: a reload leaves admin.listen for a restart."""
    moved = ""
    if where.from_config:
        moved = (
            "; a running bridge keeps the admin address it started with until it is restarted "
            "(a reload that changes admin.listen logs config.restart_needed): --admin URL "
            "reaches it there"
        )
    return Refused(
        f"no bridge answers at {where.shown} ({reason}); is it running?{moved}", EXIT_FAILURE
    )


def refusal(exc: urllib.error.HTTPError, where: Target, path: str) -> Refused:
    """What an HTTP error from the admin server at ``where`` means, for a request of ``path``
    (``/status``)."""
    # 401 and 403 are the admin guard's own answers, which a bridge of every version gives;
    # anything else may come from another server, and is worth the question.
    if exc.code not in (401, 403):
        other = foreign(where, f"answered HTTP {exc.code} to {path}")
        if other is not None:
            return other
    shown = where.shown
    try:
        said = printable(json.loads(exc.read()).get("error", ""))
    except (ValueError, AttributeError, OSError):
        said = ""
    if exc.code == 429:
        wait = exc.headers.get("Retry-After", "?")
        return Refused(
            f"the bridge at {shown} refuses requests from this address for {printable(wait)}s: "
            "too many wrong admin tokens came from it (429)",
            EXIT_FAILURE,
        )
    if exc.code == 401:
        if where.token_problem:
            return Refused(
                f"the bridge at {shown} wants its admin token, and the config's cannot be read: "
                f"{where.token_problem}; set it, or give --token or ${TOKEN_ENV}",
                EXIT_CONFIG,
            )
        if where.token is None:
            return Refused(
                f"the bridge at {shown} wants its admin token: give --token, set ${TOKEN_ENV}, "
                "or read it from the config with -c",
                EXIT_CONFIG,
            )
        return Refused(f"the bridge at {shown} refused the admin token (401)", EXIT_CONFIG)
    if exc.code == 403:
        return Refused(
            f"the bridge at {shown} refuses {path} (403): {said or 'forbidden'}; on the bridge, "
            "set admin.token (then give it here), or make admin.listen a loopback address",
            EXIT_CONFIG,
        )
    if exc.code in (404, 405):
        return Refused(f"the bridge at {shown} has no {path}: it is older than this command", 1)
    return Refused(f"the server at {shown} answered HTTP {exc.code} {said}".rstrip(), 1)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        where = target(args)
    except Refused as exc:
        return refuse(str(exc), exc.code)
    if args.watch is None:
        try:
            report = fetch(where)
        except Refused as exc:
            return refuse(str(exc), exc.code)
        print(json.dumps(report, indent=2) if args.json else format_status(report, time.time()))
        return EXIT_OK
    return _watch(where, args)


def _watch(where: Target, args: argparse.Namespace) -> int:
    """Show the report every ``args.watch`` seconds until interrupted (exit 0). A bridge that
    stops answering is shown as such; one that refuses the request ends the watch."""
    tty = sys.stdout.isatty()
    tick = threading.Event()  # never set: its wait is the interval, cut short by Ctrl-C
    try:
        while True:
            try:
                report = fetch(where)
                text = json.dumps(report) if args.json else format_status(report, time.time())
            except Refused as exc:
                if exc.code != EXIT_FAILURE:
                    return refuse(str(exc), exc.code)
                text = f"openmail-bridge: {exc}"
            stamp = time.strftime("%H:%M:%S")
            frame = text if args.json else f"{stamp}  every {args.watch:g}s (Ctrl-C stops)\n{text}"
            print(f"{_CLEAR if tty else ''}{frame}", flush=True)
            if not args.json and not tty:
                print(flush=True)
            tick.wait(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK
