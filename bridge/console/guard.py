"""The admin server's browser-facing rules: which ``Host`` it answers, which ``Origin`` may change
state, and the headers every response carries.

DNS rebinding points a name the attacker owns at 127.0.0.1, so a page from that name can talk to
a loopback server as its own origin; the browser still sends the attacker's name as ``Host``.
Answering only the listen address (and names the operator lists) defeats it. On a wildcard
listen (``0.0.0.0``, ``::``) the server cannot know its names: it answers IP literals, which no
DNS answer can rebind, ``localhost``, and ``admin.allowed_hosts``.

Cross-site requests are stopped twice: a browser's state change must be a JSON POST (which a
form on another site cannot send without a CORS preflight this server never grants) and carry
the console's own ``Origin``. A browser sends ``Origin`` on every POST; a request without one is
a program's, which needs the bearer token (or a loopback listen without a token) and cannot be
forged by a page. Pure: strings in, decisions out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final

from bridge.config.values import Listen

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    # No inline script or style, nothing from elsewhere: data shown can never run.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
"""Sent with every admin response."""

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})
JSON_TYPE: Final = "application/json"


def split_host(host: str) -> tuple[str, int | None]:
    """``name:port`` (or ``[v6]:port``) -> (lower-cased name, port); port None when absent or
    not a number."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":")
    if not sep or name.endswith(":") or (host.startswith("[") and not name.endswith("]")):
        return host, None  # no port, or a bare IPv6 literal
    return name, int(port) if port.isascii() and port.isdigit() else -1


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return name.startswith("[") == (":" in name)  # IPv6 only in brackets, as in a URL


class HostRule:
    """Which ``Host`` header values the admin server answers.

    Args:
        listen: the configured listen address.
        port: the port actually bound (``listen.port`` may be 0).
        allowed: ``admin.allowed_hosts``, compared as written (case aside).
    """

    __slots__ = ("_allowed", "_names", "_port", "_wildcard")

    def __init__(self, listen: Listen, port: int, allowed: Iterable[str] = ()) -> None:
        host = listen.host.lower()
        self._port = port
        self._wildcard = host in WILDCARD_HOSTS
        shown = f"[{host}]" if ":" in host else host
        self._names = LOOPBACK_NAMES | {shown} if listen.is_loopback else frozenset({shown})
        self._allowed = frozenset(h.strip().lower() for h in allowed)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        if host.strip().lower() in self._allowed:
            return True
        name, port = split_host(host)
        # A browser leaves out the default port.
        if port != self._port and not (port is None and self._port == 80):
            return False
        if self._wildcard:
            return name == "localhost" or _is_ip_literal(name)
        return name in self._names


def own_origins(host: str) -> frozenset[str]:
    """The origins of a page served under ``host`` (an accepted Host header): plain, or through
    a TLS-terminating proxy."""
    host = host.strip().lower()
    return frozenset({f"http://{host}", f"https://{host}"})


def state_change_refusal(
    *,
    method: str,
    content_type: str,
    origin: str | None,
    host: str,
    from_browser: bool,
    console_api: bool,
) -> str | None:
    """Why a request that may change state is refused, or None.

    ``from_browser``: it rides on a browser's credentials (the session cookie) or is a login or
    logout, so it must say where it comes from. A browser sends ``Origin`` on every POST; a
    program holding the bearer token (or on a loopback listen without one) sends none, and then
    its body is the handler's to judge, except on the console's own API (``console_api``),
    which takes JSON only.
    """
    if method != "POST":
        return f"{method} does not change state here; use POST"
    browser = from_browser or origin is not None
    if (browser or console_api) and content_type != JSON_TYPE:
        return f"a request that changes state must be Content-Type: {JSON_TYPE}"
    if origin is None:
        return "this request needs an Origin header (a browser sends one)" if browser else None
    if origin.strip().lower() not in own_origins(host):
        return "cross-origin request refused: Origin is not this console's"
    return None
