"""Who is asking the admin server: a program with the bearer token, a browser with a console
session, anyone on a loopback listen without a token, or no one known.
"""

from __future__ import annotations

import enum
import hmac
from typing import Final

from aiohttp import web

from bridge.config.values import Secret
from bridge.console.sessions import COOKIE, Sessions


class Credential(enum.StrEnum):
    NONE = "none"  # a token is set and the request carries neither it nor a session
    LOCAL = "local"  # no token is set, and the server listens on loopback only
    BEARER = "bearer"  # ``Authorization: Bearer <admin.token>``
    SESSION = "session"  # the console's session cookie, from a login with the token


CREDENTIAL: Final = web.RequestKey("credential", Credential)
"""How the admin server's guard found the request authorized."""
LIMIT_WAIVED: Final = web.RequestKey("wrong_token_limit_waived", bool)
"""The guard let the bridge's own user (or root) past its address's wrong-token limit."""


def too_many_wrong_tokens(wait: int) -> web.Response:
    """The answer to a token presented from an address past its wrong-token limit."""
    return web.json_response(
        {"error": f"too many wrong admin tokens from this address; try again in {wait}s"},
        status=429,
        headers={"Retry-After": str(wait)},
    )


LOGIN_PATH: Final = "/login"
OPEN_PATHS: Final = frozenset({"/", LOGIN_PATH, "/logout"})
"""Console paths that answer without a credential: the login form (``/`` shows the console
only with one), logging in and out."""
STATIC_PREFIX: Final = "/static/"
API_PREFIX: Final = "/api/"
BROWSER_PATHS: Final = frozenset({LOGIN_PATH, "/logout"})
"""Posted only by the console's script: always from a browser, so always with an Origin."""


def is_open(path: str) -> bool:
    """Whether ``path`` answers without a credential (its handler decides what to show)."""
    return path in OPEN_PATHS or path.startswith(STATIC_PREFIX)


def token_matches(given: str, token: Secret) -> bool:
    # Constant-time, so the response time does not tell how much of a guess was right. A guess
    # with a lone surrogate (JSON's "\ud800") or an undecodable header byte is just wrong.
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), token.get().encode("utf-8", "surrogatepass")
    )


def bearer_of(request: web.Request) -> str | None:
    """The bearer token a request carries, if any."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def credential_of(request: web.Request, token: Secret | None, sessions: Sessions) -> Credential:
    """How ``request`` is authorized; the caller has checked that a server without a token
    listens on loopback only."""
    if token is None:
        return Credential.LOCAL
    given = bearer_of(request)
    if given is not None and token_matches(given, token):
        return Credential.BEARER
    if sessions.valid(request.cookies.get(COOKIE)):
        return Credential.SESSION
    return Credential.NONE
