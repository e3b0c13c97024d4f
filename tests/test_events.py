"""bridge.events: parsing payloads into Events keeps the bytes and fails with typed errors."""

from __future__ import annotations

import hashlib
import json

import pytest

from bridge import protocol
from bridge.errors import EventError
from bridge.events import Event, Origin, content_identity, parse_event

MESSAGE = (
    b'{"event":"message.received","event_id":"evt_7f2a3b4c","inbox_id":"inb_8f3a1b2c",'
    b'"thread_id":"thr_9d4e5f6a","message":{"from":"Jane <jane@x.com>",'
    b'"to":"support@openmail.sh","subject":"Hi"}}'
)
LIFECYCLE = (
    b'{"event":"pod.suspended","event_id":"evt_1","occurred_at":"2026-02-24T10:05:00.000Z",'
    b'"inbox_id":null,"inbox_address":null,"pod_id":"pod_1","reason":"abuse"}'
)


def test_message_event_fields_and_raw_bytes_kept() -> None:
    event = parse_event(MESSAGE, Origin.WEBSOCKET, received_at=12.5)
    assert event.event_id == "evt_7f2a3b4c"
    assert event.type == "message.received"
    assert event.inbox_id == "inb_8f3a1b2c"
    assert event.thread_id == "thr_9d4e5f6a"
    assert event.sender == "Jane <jane@x.com>"
    assert event.recipient == "support@openmail.sh"
    assert event.origin is Origin.WEBSOCKET
    assert event.received_at == 12.5
    assert event.raw is MESSAGE
    assert event.has_message


def test_lifecycle_event_has_no_message_or_thread() -> None:
    event = parse_event(LIFECYCLE, Origin.WEBHOOK)
    assert (event.type, event.inbox_id, event.thread_id) == ("pod.suspended", None, None)
    assert not event.has_message


def test_fallback_event_id_used_only_when_the_body_has_none() -> None:
    body = b'{"event":"message.received"}'
    assert parse_event(body, Origin.WEBHOOK, fallback_event_id="evt_h").event_id == "evt_h"
    assert (
        parse_event(MESSAGE, Origin.WEBHOOK, fallback_event_id="evt_h").event_id == "evt_7f2a3b4c"
    )


def test_lenient_type_for_verified_webhooks() -> None:
    for body in (b'{"event_id":"evt_1"}', b'{"event_id":"evt_1","event":5}'):
        event = parse_event(body, Origin.WEBHOOK, require_type=False)
        assert event.type == protocol.UNKNOWN_EVENT_TYPE
        with pytest.raises(EventError, match="event"):
            parse_event(body, Origin.WEBSOCKET)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'"evt_1"', "not an object"),
        (b'{"event":"message.received"}', "event_id"),
        (b'{"event":"message.received","event_id":""}', "event_id"),
        (b'{"event":"message.received","event_id":7}', "event_id"),
        (b'{"event_id":"evt_1"}', "event"),
    ],
)
def test_bad_payloads_are_typed_errors(raw: bytes, match: str) -> None:
    with pytest.raises(EventError, match=match):
        parse_event(raw, Origin.WEBSOCKET)


# --- content identity and the dedup key -----------------------------------------------------------


def body(**fields: object) -> bytes:
    """``MESSAGE`` as one delivery attempt sends it, with ``fields`` set (None: left out)."""
    data = json.loads(MESSAGE) | {"attempt": 1, "delivered_at": "2026-02-24T10:05:00.012Z"}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_content_identity_ignores_attempt_and_delivered_at_only() -> None:
    first = parse_event(body(), Origin.WEBHOOK)
    retry = parse_event(body(attempt=2, delivered_at="2026-02-24T10:05:30.040Z"), Origin.WEBHOOK)
    websocket = parse_event(body(attempt=None, delivered_at=None), Origin.WEBSOCKET)
    assert first.raw != retry.raw
    assert first.content_id == retry.content_id == websocket.content_id
    # Anything else is content, at the top level and nested.
    assert parse_event(body(occurred_at="2026-02-25T00:00:00Z"), Origin.WEBHOOK).content_id != (
        first.content_id
    )
    nested = json.loads(body())
    nested["message"]["attempt"] = 2  # only the top-level field is per delivery
    assert parse_event(json.dumps(nested).encode(), Origin.WEBHOOK).content_id != first.content_id


def test_content_identity_is_sha256_of_canonical_json() -> None:
    # Key order, spacing and escapes are serialization, not content: the WebSocket frame and the
    # webhook body of one event need not be the same bytes.
    spaced = rb'{ "b": [1, {"y": "\u00e9", "x": null}], "attempt": 3, "a": "\u2713" }'
    canonical = '{"a":"\u2713","b":[1,{"x":null,"y":"\u00e9"}]}'
    assert canonical == '{"a":"✓","b":[1,{"x":null,"y":"é"}]}'
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert content_identity(json.loads(spaced)) == expected


def test_dedup_key_is_the_body_id_else_the_content_never_the_header() -> None:
    with_id = parse_event(MESSAGE, Origin.WEBHOOK, fallback_event_id="evt_header")
    assert (with_id.event_id, with_id.dedup_key) == ("evt_7f2a3b4c", "evt_7f2a3b4c")

    no_id = body(event_id=None)
    copies = [
        parse_event(no_id, Origin.WEBHOOK, fallback_event_id=header)
        for header in ("evt_h1", "evt_h2", "evt_h3")
    ]
    # Sent under the header's id; de-duplicated by what the signature covers.
    assert [e.event_id for e in copies] == ["evt_h1", "evt_h2", "evt_h3"]
    assert {e.dedup_key for e in copies} == {f"sha256:{copies[0].content_id}"}
    retry = parse_event(body(event_id=None, attempt=2), Origin.WEBHOOK, fallback_event_id="evt_h4")
    assert retry.dedup_key == copies[0].dedup_key


def test_an_event_built_without_a_payload_has_unknown_content() -> None:
    event = Event(
        event_id="evt_1",
        type="message.received",
        inbox_id=None,
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBSOCKET,
        received_at=1.0,
        raw=b"{}",
    )
    assert (event.dedup_key, event.content_id) == ("evt_1", None)


def test_content_too_deep_to_encode_is_an_event_error() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(100_000):  # far past any recursion limit, built without recursing
        inner["x"] = inner = {}
    with pytest.raises(EventError, match="nested too deeply"):
        content_identity(deep)


@pytest.mark.parametrize("field", ["inbox_id", "thread_id", "event"])
def test_an_id_or_type_longer_than_the_bound_refuses_the_event(field: str) -> None:
    payload = {"event": "message.received", "event_id": "evt_1", "inbox_id": "inb_1"}
    at_bound = payload | {field: "x" * protocol.MAX_ID_BYTES}
    assert getattr_of(parse_event(json.dumps(at_bound).encode(), Origin.WEBHOOK), field) == (
        "x" * protocol.MAX_ID_BYTES
    )
    over = payload | {field: "é" * (protocol.MAX_ID_BYTES // 2 + 1)}  # 258 bytes in UTF-8
    with pytest.raises(EventError, match=f"'{field}' is longer than 256 bytes"):
        parse_event(json.dumps(over).encode(), Origin.WEBHOOK)


def getattr_of(event: Event, field: str) -> object:
    return event.type if field == "event" else getattr(event, field)
