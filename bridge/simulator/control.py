"""The simulator's control API under ``/_sim``: JSON over HTTP so tests in any language can inject
events (with OpenMail's classification and served attachments), cut connections, refuse
connections, configure webhooks, choose how attachment fetches are answered and read what was
delivered and fetched.

Unauthenticated on purpose (a local test tool, bound to 127.0.0.1 by default); it never returns
secrets. Bad input is answered ``400 {"error": "..."}`` naming the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final, Literal, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from bridge import protocol
from bridge.simulator.attachments import MAX_ATTACHMENTS, AttachmentSpec, ServedAttachment
from bridge.simulator.connection import ConnectionInfo
from bridge.simulator.downloads import FetchBehaviour, FetchMode
from bridge.simulator.endpoint import is_server_close_code
from bridge.simulator.mail import UNSET, Unset
from bridge.simulator.records import AttachmentRequest, DeliveryRecord, Rejection

MAX_COUNT: Final = 1000
"""Most events one ``POST /_sim/events`` may create."""
CLASSIFICATION: Final = ("verdict", "category", "auto_replyable")
"""OpenMail's classification fields, set verbatim in ``message`` when a request names them."""
_MAIL_ONLY: Final = (*CLASSIFICATION, "attachments")


class Controlled(Protocol):
    """What the control API reads and turns: the parts of ``Simulator`` it needs, so that the
    server can hand itself in without this module depending on it."""

    @property
    def inboxes(self) -> tuple[str, ...]: ...
    @property
    def events(self) -> Sequence[dict[str, object]]: ...
    @property
    def deliveries(self) -> Sequence[DeliveryRecord]: ...
    @property
    def ws_url(self) -> str: ...
    @property
    def connections(self) -> list[ConnectionInfo]: ...
    @property
    def refusing(self) -> bool: ...
    @property
    def pending_webhooks(self) -> int: ...
    @property
    def rejections(self) -> Sequence[Rejection]: ...
    @property
    def attachment_requests(self) -> Sequence[AttachmentRequest]: ...
    @property
    def attachment_fetch(self) -> FetchBehaviour: ...

    def webhook_config(self) -> dict[str, object]: ...
    def message_event(
        self,
        *,
        inbox_id: str | None = None,
        thread_id: str | None = None,
        attachments: int | Sequence[AttachmentSpec] | None = None,
        **overrides: object,
    ) -> dict[str, object]: ...
    def attachments_of(self, message_id: str) -> list[ServedAttachment]: ...
    def set_attachment_fetch(
        self,
        mode: FetchMode | str = FetchMode.SERVE,
        *,
        status: int | None = None,
        times: int | None = None,
        redirect_base: str | None = None,
    ) -> None: ...
    def lifecycle_event(
        self,
        kind: str = "inbox.suspended",
        *,
        inbox_id: str | Unset | None = UNSET,
        reason: str | Unset | None = UNSET,
    ) -> dict[str, object]: ...
    async def inject(self, payload: dict[str, object] | None = None) -> str: ...
    async def disconnect(self, code: int = 1001, *, abrupt: bool = False) -> int: ...
    def refuse(
        self, seconds: float, *, mode: Literal["close", "http"] = "close", code: int | None = None
    ) -> None: ...
    def set_webhook(
        self, url: str | None, secret: str | None, *, inbox_id: str | None = None
    ) -> None: ...


_simulator: Final = web.AppKey[Controlled]("simulator")


class BadRequest(ValueError):
    """A control request that cannot be carried out; the message is shown to the caller."""


def add_routes(app: web.Application, simulator: Controlled) -> None:
    app[_simulator] = simulator
    app.router.add_post("/_sim/events", post_events)
    app.router.add_get("/_sim/events", get_events)
    app.router.add_post("/_sim/disconnect", post_disconnect)
    app.router.add_post("/_sim/refuse", post_refuse)
    app.router.add_post("/_sim/webhook", post_webhook)
    app.router.add_get("/_sim/deliveries", get_deliveries)
    app.router.add_post("/_sim/attachments", post_attachments)
    app.router.add_get("/_sim/attachments", get_attachments)
    app.router.add_get("/_sim/state", get_state)
    app.middlewares.append(_errors)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)


async def _body(request: web.Request, allowed: frozenset[str]) -> dict[str, object]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return data


def _opt_str(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{key}: must be a string or null")


def _number(data: dict[str, object], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key}: must be a number")
    return float(value)


def _int(data: dict[str, object], key: str, default: int | None) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key}: must be an integer")
    return value


async def post_events(request: web.Request) -> web.Response:
    """``{"count"?, "inbox_id"?, "thread_id"?, "event"?, "reason"?, "payload"?, "verdict"?,
    "category"?, "auto_replyable"?, "attachments"?}``.

    Answers ``{"event_ids": [...]}``; ``payload`` (a full event) excludes the other fields. The
    classification fields take any JSON value (malformed ones included, for testing a client's
    handling) and go into ``message`` as given; ``attachments`` is a count or a list of
    ``{"filename"?, "content_type"?, "size_bytes"?}``, and then the answer also has
    ``"attachments": {event_id: [{...the message's entry..., "sha256"}, ...]}``.
    """
    sim = request.app[_simulator]
    allowed = frozenset(
        {"count", "inbox_id", "thread_id", "event", "reason", "payload", *_MAIL_ONLY}
    )
    data = await _body(request, allowed)
    count = _int(data, "count", 1) or 0
    if not 1 <= count <= MAX_COUNT:
        raise BadRequest(f"count: must be between 1 and {MAX_COUNT}")
    inbox_id = _opt_str(data, "inbox_id")
    thread_id = _opt_str(data, "thread_id")
    kind = _opt_str(data, "event") or protocol.MESSAGE_RECEIVED
    if inbox_id is not None and inbox_id not in sim.inboxes:
        raise BadRequest(f"inbox_id: {inbox_id} is not one of {', '.join(sim.inboxes)}")
    mail_only = [key for key in _MAIL_ONLY if key in data]
    if mail_only and ("payload" in data or kind != protocol.MESSAGE_RECEIVED):
        raise BadRequest(f"{mail_only[0]}: only for generated message.received events")
    payloads: list[dict[str, object]] = []
    if "payload" in data:
        payload = data["payload"]
        if not isinstance(payload, dict):
            raise BadRequest("payload: must be a JSON object (a full event)")
        if len(data) > 1 + ("count" in data):
            raise BadRequest(
                "payload: cannot be combined with inbox_id, thread_id, event or reason"
            )
        payloads = [dict(payload) for _ in range(count)]  # same event_id when given: a duplicate
    elif kind == protocol.MESSAGE_RECEIVED:
        if "reason" in data:
            raise BadRequest("reason: only for lifecycle events")
        specs = _attachment_specs(data)
        extra = {key: data[key] for key in CLASSIFICATION if key in data}
        overrides: dict[str, object] = {"message": extra} if extra else {}
        try:
            payloads = [
                sim.message_event(
                    inbox_id=inbox_id, thread_id=thread_id, attachments=specs, **overrides
                )
                for _ in range(count)
            ]
        except ValueError as exc:
            raise BadRequest(f"attachments: {exc}") from None
    elif kind in protocol.LIFECYCLE_EVENT_TYPES:
        if thread_id is not None:
            raise BadRequest("thread_id: lifecycle events have no thread")
        reason: str | Unset | None = _opt_str(data, "reason") if "reason" in data else UNSET
        target: str | Unset | None = inbox_id if inbox_id is not None else UNSET
        payloads = [sim.lifecycle_event(kind, inbox_id=target, reason=reason) for _ in range(count)]
    else:
        known = ", ".join([protocol.MESSAGE_RECEIVED, *sorted(protocol.LIFECYCLE_EVENT_TYPES)])
        raise BadRequest(f"event: unknown type {kind!r}; use one of {known} or send a payload")
    try:
        event_ids = [await sim.inject(payload) for payload in payloads]
    except ValueError as exc:
        raise BadRequest(f"payload: {exc}") from None
    answer: dict[str, object] = {"event_ids": event_ids}
    if "attachments" in data:
        answer["attachments"] = {
            event_id: [_served_json(att) for att in sim.attachments_of(_message_id(payload))]
            for event_id, payload in zip(event_ids, payloads, strict=True)
        }
    return web.json_response(answer)


def _attachment_specs(data: dict[str, object]) -> list[AttachmentSpec] | None:
    """The ``attachments`` field: a count, or a list of specs; None when absent."""
    if "attachments" not in data:
        return None
    value = data["attachments"]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_ATTACHMENTS:
            raise BadRequest(f"attachments: a count between 0 and {MAX_ATTACHMENTS}")
        return [AttachmentSpec()] * value
    if not isinstance(value, list):
        raise BadRequest("attachments: a count or a list of attachment objects")
    specs = []
    allowed = {"filename", "content_type", "size_bytes"}
    for index, item in enumerate(value):
        where = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: must be an object")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {', '.join(unknown)}")
        filename, content_type = item.get("filename"), item.get("content_type")
        size = item.get("size_bytes")
        if filename is not None and not isinstance(filename, str):
            raise BadRequest(f"{where}.filename: must be a string")
        if content_type is not None and not isinstance(content_type, str):
            raise BadRequest(f"{where}.content_type: must be a string")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise BadRequest(f"{where}.size_bytes: must be an integer")
        specs.append(AttachmentSpec(filename=filename, content_type=content_type, size_bytes=size))
    return specs


def _message_id(event: dict[str, object]) -> str:
    message = event.get("message")
    return str(message.get("id")) if isinstance(message, dict) else ""


def _served_json(att: ServedAttachment) -> dict[str, object]:
    """The attachment as the message carries it, and the digest of its bytes."""
    return {**att.to_json(), "sha256": att.sha256()}


async def get_events(request: web.Request) -> web.Response:
    return web.json_response(request.app[_simulator].events)


async def post_disconnect(request: web.Request) -> web.Response:
    """``{"code"?: 1001, "abrupt"?: false}`` → ``{"closed": n}``."""
    data = await _body(request, frozenset({"code", "abrupt"}))
    code = _int(data, "code", 1001)
    if code is None:
        raise BadRequest("code: must be an integer")
    abrupt = data.get("abrupt", False)
    if not isinstance(abrupt, bool):
        raise BadRequest("abrupt: must be true or false")
    if not abrupt and not is_server_close_code(code):
        raise BadRequest(f"code: {code} is not a close code a server may send")
    closed = await request.app[_simulator].disconnect(code, abrupt=abrupt)
    return web.json_response({"closed": closed})


async def post_refuse(request: web.Request) -> web.Response:
    """``{"seconds": 5, "mode"?: "close"|"http", "code"?: int}`` → ``{"refusing": true, ...}``."""
    data = await _body(request, frozenset({"seconds", "mode", "code"}))
    if "seconds" not in data:
        raise BadRequest("seconds: required")
    seconds = _number(data, "seconds", 0.0)
    mode = data.get("mode", "close")
    if mode not in ("close", "http"):
        raise BadRequest("mode: must be 'close' or 'http'")
    checked: Literal["close", "http"] = "http" if mode == "http" else "close"
    code = _int(data, "code", None)
    sim = request.app[_simulator]
    try:
        sim.refuse(seconds, mode=checked, code=code)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response({"refusing": sim.refusing, "seconds": seconds, "mode": checked})


async def post_webhook(request: web.Request) -> web.Response:
    """``{"url": str|null, "secret": str|null, "inbox_id"?: str}`` → webhook config, no secrets."""
    data = await _body(request, frozenset({"url", "secret", "inbox_id"}))
    if "url" not in data:
        raise BadRequest("url: required (null removes the webhook)")
    sim = request.app[_simulator]
    try:
        sim.set_webhook(
            _opt_str(data, "url"), _opt_str(data, "secret"), inbox_id=_opt_str(data, "inbox_id")
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response(sim.webhook_config())


async def post_attachments(request: web.Request) -> web.Response:
    """``{"mode": "serve"|"redirect"|"fail"|"hang", "status"?, "times"?, "redirect_base"?}``
    → the behaviour now in force (see ``bridge.simulator.downloads``)."""
    data = await _body(request, frozenset({"mode", "status", "times", "redirect_base"}))
    mode = data.get("mode")
    modes = [str(m) for m in FetchMode]
    if mode not in modes:
        raise BadRequest(f"mode: must be one of {', '.join(modes)}")
    sim = request.app[_simulator]
    try:
        sim.set_attachment_fetch(
            str(mode),
            status=_int(data, "status", None),
            times=_int(data, "times", None),
            redirect_base=_opt_str(data, "redirect_base"),
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response(sim.attachment_fetch.to_json())


async def get_attachments(request: web.Request) -> web.Response:
    """The behaviour in force and every attachment request, oldest first."""
    sim = request.app[_simulator]
    return web.json_response(
        {
            **sim.attachment_fetch.to_json(),
            "requests": [r.to_json() for r in sim.attachment_requests],
        }
    )


async def get_deliveries(request: web.Request) -> web.Response:
    """Every delivery record, oldest first; ``?event_id=`` narrows to one event."""
    sim = request.app[_simulator]
    wanted = request.query.get("event_id")
    records = [r.to_json() for r in sim.deliveries if wanted is None or r.event_id == wanted]
    return web.json_response(records)


async def get_state(request: web.Request) -> web.Response:
    sim = request.app[_simulator]
    return web.json_response(
        {
            "ws_url": sim.ws_url,
            "inboxes": list(sim.inboxes),
            "connections": [info.to_json() for info in sim.connections],
            "webhook": sim.webhook_config(),
            "refusing": sim.refusing,
            "events": len(sim.events),
            "deliveries": len(sim.deliveries),
            "pending_webhooks": sim.pending_webhooks,
            "rejections": [r.to_json() for r in sim.rejections],
        }
    )
