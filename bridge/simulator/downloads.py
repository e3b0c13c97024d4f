"""``GET /v1/attachments/{message_id}/{filename}``: attachment bytes for the API key (§6, §10), the
older docs' redirect to a signed URL, the faults a fetcher's retries are tested against, and a
record of every request.

How fetches are answered is one :class:`FetchBehaviour` at a time:

- ``serve`` (the newest docs): the bytes, with the attachment's ``Content-Type``. A missing or wrong
  ``Authorization: Bearer`` key is 401, an unknown attachment 404 (authorisation first, so a
  stranger learns nothing about which files exist).
- ``redirect`` (the older docs): an authorised request for a known attachment gets a 302 to
  ``{redirect_base}/_sim/signed/{message_id}/{filename}?signature=...``, which serves the bytes to
  anyone holding the signed URL and needs no key (403 for a wrong signature).
- ``fail``: every request on the API path is answered with ``status`` (default 500) before anything
  else is looked at, as a broken server would.
- ``hang``: every request on the API path is held open without an answer until the behaviour
  changes or the simulator stops (then 503).

``times`` limits a behaviour to that many requests on the API path (for ``redirect``: that many
redirects); ``serve`` follows. The signed path always serves.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Final
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from bridge.simulator.attachments import ServedAttachment
from bridge.simulator.keys import AccountKey, bearer_token
from bridge.simulator.records import AttachmentRequest

API_PATH: Final = "/v1/attachments/{message_id}/{filename}"
SIGNED_PATH: Final = "/_sim/signed/{message_id}/{filename}"
HUNG_STATUS: Final = 503
"""What a held fetch is finally answered with, if its client is still there."""


class FetchMode(enum.StrEnum):
    SERVE = "serve"
    REDIRECT = "redirect"
    FAIL = "fail"
    HANG = "hang"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchBehaviour:
    """How attachment fetches are answered (see the module docstring).

    Raises:
        ValueError: a status outside 400-599 or given for another mode than ``fail``, ``times``
            below 1, or a ``redirect_base`` that is not a bare http(s) origin or is given for
            another mode than ``redirect``.
    """

    mode: FetchMode = FetchMode.SERVE
    status: int | None = None
    times: int | None = None
    redirect_base: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and (
            self.mode is not FetchMode.FAIL or not 400 <= self.status <= 599
        ):
            raise ValueError("status: a 4xx or 5xx status, and only with mode 'fail'")
        if self.times is not None and self.times < 1:
            raise ValueError("times: must be at least 1 (or null: until changed)")
        if self.redirect_base is not None:
            if self.mode is not FetchMode.REDIRECT:
                raise ValueError("redirect_base: only with mode 'redirect'")
            url = URL(self.redirect_base)
            if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
                raise ValueError(
                    "redirect_base: must be an http(s) origin such as https://host:port"
                )
            if url.query_string or url.fragment or url.user is not None:
                raise ValueError("redirect_base: no query, fragment or user-info")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class AttachmentServer:
    """Serves the attachments of generated mail (§6) under the account's key.

    Args:
        key: the account's API key (rotations apply here at once, as on the WebSocket).
        notify: called after every recorded request.
    """

    def __init__(self, *, key: AccountKey, notify: Callable[[], None]) -> None:
        self._key = key
        self._notify = notify
        self._files: dict[tuple[str, str], ServedAttachment] = {}
        self.requests: list[AttachmentRequest] = []
        self.behaviour = FetchBehaviour()
        self._left: int | None = None
        self._release = asyncio.Event()
        self._signing_key = secrets.token_bytes(16)
        self.base_url = ""
        """Where this server is reached (set when the simulator starts)."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(API_PATH, self.handle)
        app.router.add_get(SIGNED_PATH, self.handle_signed)

    # --- What is served ---------------------------------------------------------------------------

    def add(self, attachments: Sequence[ServedAttachment]) -> None:
        for att in attachments:
            self._files[att.message_id, att.filename] = att

    def get(self, message_id: str, filename: str) -> ServedAttachment | None:
        return self._files.get((message_id, filename))

    def of(self, message_id: str) -> list[ServedAttachment]:
        return [att for (msg, _), att in self._files.items() if msg == message_id]

    def configure(self, behaviour: FetchBehaviour) -> None:
        """Answer fetches this way from now on; requests held open so far are answered (503)."""
        self.behaviour = behaviour
        self._left = behaviour.times
        self.release()

    def release(self) -> None:
        """Answer every request held open by ``hang``."""
        self._release.set()
        self._release = asyncio.Event()

    # --- Serving ----------------------------------------------------------------------------------

    def _use(self) -> FetchBehaviour:
        """The behaviour for this fetch, counting it against ``times``."""
        behaviour = self.behaviour
        if self._left is not None:
            self._left -= 1
            if self._left <= 0:
                self.behaviour, self._left = FetchBehaviour(), None
        return behaviour

    def _record(self, request: web.Request, status: int | None) -> None:
        self.requests.append(
            AttachmentRequest(
                path=request.rel_url.raw_path,
                authorization="Authorization" in request.headers,
                status=status,
            )
        )
        self._notify()

    def _answer(self, request: web.Request, response: web.Response) -> web.Response:
        self._record(request, response.status)
        return response

    async def handle(self, request: web.Request) -> web.Response:
        message_id, filename = request.match_info["message_id"], request.match_info["filename"]
        if self.behaviour.mode in (FetchMode.FAIL, FetchMode.HANG):
            behaviour = self._use()
            if behaviour.mode is FetchMode.FAIL:
                status = behaviour.status or 500
                return self._answer(request, _error(status, "simulated failure"))
            released = self._release
            self._record(request, None)
            await released.wait()
            return web.json_response({"error": "released"}, status=HUNG_STATUS)
        if not self._key.matches(bearer_token(request.headers)):
            return self._answer(request, _error(401, "unauthorized: invalid API key"))
        att = self._files.get((message_id, filename))
        if att is None:
            return self._answer(request, _error(404, "attachment not found"))
        if self.behaviour.mode is FetchMode.REDIRECT:
            base = self._use().redirect_base or self.base_url
            location = f"{base.rstrip('/')}{self._signed_path(att)}"
            return self._answer(request, web.Response(status=302, headers={"Location": location}))
        return self._answer(request, _bytes(att))

    async def handle_signed(self, request: web.Request) -> web.Response:
        att = self._files.get((request.match_info["message_id"], request.match_info["filename"]))
        if att is None:
            return self._answer(request, _error(404, "attachment not found"))
        signature = request.query.get("signature", "")
        if not hmac.compare_digest(signature, self._signature(att)):
            return self._answer(request, _error(403, "signature does not match"))
        return self._answer(request, _bytes(att))

    def _signature(self, att: ServedAttachment) -> str:
        message = f"{att.message_id}/{att.filename}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def _signed_path(self, att: ServedAttachment) -> str:
        path = SIGNED_PATH.format(
            message_id=quote(att.message_id, safe=""), filename=quote(att.filename, safe="")
        )
        return f"{path}?signature={self._signature(att)}"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bytes(att: ServedAttachment) -> web.Response:
    # The type goes in as a header: aiohttp's content_type argument refuses a charset parameter.
    return web.Response(body=att.content(), headers={"Content-Type": att.content_type})
