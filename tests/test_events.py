"""bridge.events: parsing payloads into Events keeps the bytes and fails with typed errors."""

from __future__ import annotations

import pytest

from bridge import protocol
from bridge.errors import EventError
from bridge.events import Origin, parse_event

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
