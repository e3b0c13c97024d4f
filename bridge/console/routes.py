"""The console's HTTP handlers on the admin server: the page at ``/``, logging in and out, the
static files, and the JSON API the page (and scripts, with the bearer token) use.

The admin server's guard (``bridge.admin``) has already checked the ``Host``, the credential and,
for a POST, the content type and ``Origin`` when a handler runs; it records the credential on the
request (:data:`~bridge.console.auth.CREDENTIAL`).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog
from aiohttp import web

from bridge import logs
from bridge.config import AdminConfig
from bridge.console import page, view
from bridge.console.auth import (
    CREDENTIAL,
    LIMIT_WAIVED,
    LOGIN_PATH,
    STATIC_PREFIX,
    Credential,
    token_matches,
    too_many_wrong_tokens,
)
from bridge.console.logins import FailedLogins
from bridge.console.sessions import COOKIE, LIFETIME, Sessions
from bridge.console.view import ConsoleView
from bridge.errors import StoreError
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.console")

STATIC_TYPES: Final = {
    "console.js": "text/javascript",
    "panels.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
EVENTS_LIMIT: Final = 100
"""Most events ``/api/events`` lists: the console shows the last 100."""
DEAD_LIMIT: Final = 100
"""Most dead letters ``/api/dead`` lists per sink."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DeadAction = Callable[[ConsoleView, str, str | None], Awaitable[int]]
"""``view.retry_dead`` or ``view.purge_dead``: (view, sink, event id or None) -> rows changed."""


def _static_files() -> dict[str, bytes]:
    folder = importlib.resources.files("bridge.console") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


def _json(data: object, status: int = 200) -> web.Response:
    # Errors and reasons come from receivers and peers: masked as the logs are.
    return web.json_response(logs.REDACTOR.scrub_tree(data), status=status)


def _limit(request: web.Request, most: int) -> int:
    """``?limit=N``, between 1 and ``most`` (default ``most``). Raises HTTPBadRequest."""
    text = request.query.get("limit")
    if text is None:
        return most
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
        raise web.HTTPBadRequest(
            text=f'{{"error": "limit: a whole number from 1 to {most}"}}',
            content_type="application/json",
        )
    return int(text)


async def _body(request: web.Request) -> Mapping[str, object]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def _unavailable(call: Handler) -> Handler:
    """Answer 503 when the store cannot be read."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await call(request)
        except StoreError as exc:
            return _json({"error": str(exc)}, status=503)

    return handle


class Console:
    """The console's routes.

    Args:
        config: the ``admin`` section (the token, ``show_content``).
        view: the running bridge.
        sessions: the live console sessions, shared with the admin server's guard.
        logins: wrong tokens per address, shared with the guard, which refuses an address
            that sent too many before a login's token is compared.
    """

    def __init__(
        self, config: AdminConfig, view: ConsoleView, sessions: Sessions, logins: FailedLogins
    ) -> None:
        self.config = config
        self.view = view
        self.sessions = sessions
        self.logins = logins
        self._static = _static_files()
        self._failed_logins = Throttle()

    def add_routes(self, app: web.Application) -> None:
        router = app.router
        router.add_get("/", _unavailable(self._index))
        router.add_post(LOGIN_PATH, self._login)
        router.add_post("/logout", self._logout)
        router.add_get(STATIC_PREFIX + "{name}", self._file)
        router.add_get("/api/overview", _unavailable(self._overview))
        router.add_get("/api/events", _unavailable(self._events))
        router.add_get("/api/events/{event_id}", _unavailable(self._event))
        router.add_get("/api/dead", _unavailable(self._dead))
        router.add_post("/api/dead/retry", _unavailable(self._retry))
        router.add_post("/api/dead/purge", _unavailable(self._purge))

    # --- the page ------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        if request[CREDENTIAL] is Credential.NONE:
            html = page.login_page()
        else:
            shown = logs.REDACTOR.scrub_tree(
                {
                    "overview": await view.read_overview(self.view),
                    "events": await view.read_events(self.view, limit=EVENTS_LIMIT),
                    "dead": await view.read_dead(self.view, limit=DEAD_LIMIT),
                }
            )
            assert isinstance(shown, dict)  # scrub_tree keeps the shape
            html = page.console_page(
                shown["overview"],
                shown["events"],
                shown["dead"],
                can_log_out=self.config.token is not None,
            )
        return web.Response(
            text=html,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._static[name],
            content_type=STATIC_TYPES[name],
            headers={"Cache-Control": "no-cache"},
        )

    async def _login(self, request: web.Request) -> web.Response:
        token = self.config.token
        if token is None:
            return _json({"error": "this bridge has no admin.token: nothing to log in to"}, 404)
        given = (await _body(request)).get("token")
        # Asked again now that the body is in: logins whose headers passed the guard together,
        # their bodies held back, would otherwise all be compared past the limit.
        wait = None if request.get(LIMIT_WAIVED) else self.logins.retry_after(request.remote)
        if wait is not None:
            return too_many_wrong_tokens(wait)
        if not isinstance(given, str) or not token_matches(given, token):
            self.logins.failed(request.remote)
            # A guesser must not flood the journal: one line a minute, with the count.
            if (suppressed := self._failed_logins.admit()) is not None:
                log.warning("console.login_failed", remote=request.remote, suppressed=suppressed)
            return _json({"error": "wrong token"}, status=401)
        self.logins.succeeded(request.remote)
        response = _json({"ok": True})
        response.set_cookie(
            COOKIE,
            self.sessions.create(),
            max_age=int(LIFETIME),
            path="/",
            httponly=True,
            samesite="Strict",
            # Behind a TLS-terminating proxy the bridge sees plain HTTP; the browser's Origin
            # (checked to be the console's own) says how it reached the console.
            secure=request.scheme == "https"
            or request.headers.get("Origin", "").startswith("https://"),
        )
        log.info("console.login", remote=request.remote)
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(COOKIE))
        response = _json({"ok": True})
        response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    # --- the JSON API --------------------------------------------------------------------

    async def _overview(self, _: web.Request) -> web.Response:
        return _json(await view.read_overview(self.view))

    async def _events(self, request: web.Request) -> web.Response:
        limit = _limit(request, EVENTS_LIMIT)
        return _json({"events": await view.read_events(self.view, limit=limit)})

    async def _event(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        found = await view.read_event(self.view, event_id)
        if found is None:
            return _json({"error": f"no event {event_id} in the spool or its history"}, 404)
        return _json(found)

    async def _dead(self, request: web.Request) -> web.Response:
        limit = _limit(request, DEAD_LIMIT)
        return _json({"sinks": await view.read_dead(self.view, limit=limit)})

    async def _target(self, request: web.Request) -> tuple[str, str | None] | web.Response:
        """``{"sink": NAME, "event_id"?: ID}`` of a retry or purge, or the answer refusing it."""
        body = await _body(request)
        sink, event_id = body.get("sink"), body.get("event_id")
        if not isinstance(sink, str) or not sink or not isinstance(event_id, str | None):
            return _json({"error": 'expected a JSON body {"sink": NAME, "event_id"?: ID}'}, 400)
        known = await view.known_sinks(self.view)
        if sink not in known:
            return _json({"error": f"unknown sink {sink!r}", "sinks": sorted(known)}, 404)
        return sink, event_id or None

    async def _retry(self, request: web.Request) -> web.Response:
        return await self._act(request, view.retry_dead, "retried")

    async def _purge(self, request: web.Request) -> web.Response:
        return await self._act(request, view.purge_dead, "purged")

    async def _act(self, request: web.Request, act: DeadAction, done: str) -> web.Response:
        """Retry or purge what the body names; ``{done: count}``, logged as ``dlq.<done>``."""
        target = await self._target(request)
        if isinstance(target, web.Response):
            return target
        count = await act(self.view, *target)
        log.info(f"dlq.{done}", sink=target[0], event_id=target[1], count=count, by="console")
        return _json({done: count})
