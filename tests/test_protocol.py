"""bridge.protocol with literal bytes: frames, close-code classes, signatures, timestamps."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from bridge import protocol
from bridge.protocol import CloseClass, FrameKind, ProtocolError


def test_ws_url_is_built_from_the_rest_base_as_official_clients_do() -> None:
    assert protocol.ws_url_from_base("https://api.openmail.sh") == "wss://api.openmail.sh/v1/ws"
    assert protocol.ws_url_from_base("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/v1/ws"


def test_subscribe_frame_omits_empty_filters_and_carries_the_cursor() -> None:
    assert json.loads(protocol.subscribe_frame()) == {"type": "subscribe"}
    frame = json.loads(protocol.subscribe_frame(["inb_1"], ["message.received"], "evt_7"))
    assert frame == {
        "type": "subscribe",
        "inbox_ids": ["inb_1"],
        "event_types": ["message.received"],
        "last_event_id": "evt_7",
    }
    assert json.loads(protocol.unsubscribe_frame()) == {"type": "unsubscribe"}
    assert json.loads(protocol.unsubscribe_frame(["inb_1"])) == {
        "type": "unsubscribe",
        "inbox_ids": ["inb_1"],
    }
    assert json.loads(protocol.PING_FRAME) == {"type": "ping"}


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"type":"subscribed","inbox_ids":[],"event_types":[]}', FrameKind.SUBSCRIBED),
        (b'{"type":"unsubscribed","inbox_ids":["inb_1"]}', FrameKind.UNSUBSCRIBED),
        (b'{"type":"pong"}', FrameKind.PONG),
        (b'{"type":"error","message":"rate limit"}', FrameKind.ERROR),
        (b'{"event":"message.received","event_id":"evt_1"}', FrameKind.EVENT),
        (b'{"type":"hello"}', FrameKind.UNKNOWN),
        (b'{"type":"event","event":"x"}', FrameKind.UNKNOWN),
    ],
)
def test_server_frames_are_classified(raw: bytes, kind: FrameKind) -> None:
    frame = protocol.parse_server_frame(raw)
    assert frame.kind is kind
    assert frame.raw == raw


def test_error_frame_message() -> None:
    frame = protocol.parse_server_frame('{"type":"error","message":"inbox inb_9 not owned"}')
    assert frame.message == "inbox inb_9 not owned"
    assert protocol.error_is_unowned_inbox(frame.message)
    assert not protocol.error_is_unowned_inbox("rate limit exceeded")


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b"42", b'{"no":"type"}', b"\xff\xfe"])
def test_malformed_frames_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.parse_server_frame(raw)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (1000, CloseClass.TRANSIENT),
        (1001, CloseClass.TRANSIENT),
        (1006, CloseClass.TRANSIENT),
        (None, CloseClass.TRANSIENT),
        (4001, CloseClass.KEY_REJECTED),
        (4003, CloseClass.KEY_REJECTED),
        (4008, CloseClass.TOO_MANY_CONNECTIONS),
        (4029, CloseClass.RATE_LIMITED),
        (4999, CloseClass.TRANSIENT),
    ],
)
def test_close_codes_are_classified(code: int | None, kind: CloseClass) -> None:
    assert protocol.classify_close(code) is kind


def test_handshake_statuses_are_classified() -> None:
    assert protocol.classify_handshake_status(401) is CloseClass.KEY_REJECTED
    assert protocol.classify_handshake_status(403) is CloseClass.KEY_REJECTED
    assert protocol.classify_handshake_status(429) is CloseClass.RATE_LIMITED
    assert protocol.classify_handshake_status(502) is CloseClass.TRANSIENT


def test_signature_matches_an_independent_hmac() -> None:
    body = b'{"event":"message.received","event_id":"evt_7f2a3b4c"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert protocol.sign("s3cret", 1700000000, body) == expected
    assert protocol.signature_matches(["other", "s3cret"], "1700000000", body, expected)
    assert protocol.signature_matches(["s3cret"], "1700000000", body, expected.upper())
    assert not protocol.signature_matches(["other"], "1700000000", body, expected)
    assert not protocol.signature_matches(["s3cret"], "1700000001", body, expected)
    assert not protocol.signature_matches(["s3cret"], "1700000000", body + b" ", expected)
    assert not protocol.signature_matches([], "1700000000", body, expected)
    assert not protocol.signature_matches(["s3cret"], "1700000000", body, "sha256=" + expected)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, protocol.TimestampProblem.MISSING),
        ("", protocol.TimestampProblem.MISSING),
        ("12.5", protocol.TimestampProblem.MALFORMED),
        ("abc", protocol.TimestampProblem.MALFORMED),
        ("١٢٣", protocol.TimestampProblem.MALFORMED),
        ("1699999699", protocol.TimestampProblem.STALE),
        ("1700000301", protocol.TimestampProblem.STALE),
        ("1699999700", None),
        ("1700000300", None),
        (" 1700000000 ", None),
    ],
)
def test_timestamp_window(value: str | None, problem: protocol.TimestampProblem | None) -> None:
    assert protocol.check_timestamp(value, 1_700_000_000.0, 300.0) == problem


@pytest.mark.parametrize(
    ("message", "auth"),
    [
        ("Unauthorized", True),
        ("invalid API key", True),
        ("Invalid key", True),
        ("key revoked", True),
        ("Forbidden", True),
        ("unknown last_event_id", False),
        ("rate limit exceeded", False),
        ("", False),
    ],
)
def test_error_text_that_names_the_key_is_taken_for_a_refused_key(message: str, auth: bool) -> None:
    assert protocol.error_looks_like_auth(message) is auth


@pytest.mark.parametrize(
    ("data", "occurred"),
    [
        ({"occurred_at": "2026-01-01T00:00:10.000Z"}, 1767225610.0),
        ({"occurred_at": "2026-01-01T01:00:10+01:00"}, 1767225610.0),
        ({"occurred_at": "2026-01-01T00:00:10"}, None),  # no zone: could be any local time
        ({"occurred_at": "yesterday"}, None),
        ({"occurred_at": ""}, None),
        ({"occurred_at": 1767225610}, None),
        ({"occurred_at": "2026-01-01T00:00:10Z" + " " * 100}, None),
        ({}, None),
    ],
)
def test_occurred_at_reads_an_iso_time_with_its_zone(
    data: dict[str, object], occurred: float | None
) -> None:
    assert protocol.occurred_at(data) == occurred


@pytest.mark.parametrize(
    ("occurred", "replayed"),
    [
        (1767225600.0, True),  # well before the subscribe
        (1767225609.9, True),  # a moment before it: missed during the reconnect
        (1767225610.0, False),  # from the subscribe on: live
        (1767225610.1, False),
        (None, None),
    ],
)
def test_an_event_that_occurred_before_subscribed_was_replayed(
    occurred: float | None, replayed: bool | None
) -> None:
    moment = 1767225610.0  # 2026-01-01T00:00:10Z
    assert protocol.replayed(occurred, moment) is replayed


# --- strict JSON: the compact fast path and the strict parser agree ------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1,"a":2}',  # compact: the fast path's round trip differs, the strict parse refuses
        b'{"a": 1, "a": 2}',
        b'{"m":{"inbox_id":"inb_a","x":[1,{"k":1,"k":1}],"inbox_id":"inb_b"}}',
        b'[{"k":"v","k":"v"}]',
    ],
)
def test_a_key_given_twice_is_refused_in_any_spacing(raw: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="given twice"):
        protocol.loads_strict(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"message.received","n":[1,2.5,-0.0,null,true],"s":"\\u00e9\\n"}',
        b'{"big":123456789012345678901234567890,"f":1E5}',  # values orjson reads differently
        b'{ "spaced" : "json" }',
        '{"text":"caf\u00e9"}'.encode(),
    ],
)
def test_strict_parse_returns_what_the_standard_parser_returns(raw: bytes) -> None:
    assert protocol.loads_strict(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", [b'{"n":1e400}', b'{"n": -1E+999}', b"[1.5e309]"])
def test_a_number_no_float_holds_is_refused(raw: bytes) -> None:
    # Read as inf it would be written back as Infinity, which is not JSON.
    with pytest.raises(protocol.ProtocolError, match="too large for a float"):
        protocol.loads_strict(raw)


def test_named_inboxes_are_the_known_ones_the_bytes_name_in_order() -> None:
    known = {"inb_a", "inb_b", "inb_c"}
    body = b'{"inbox_id" : "inb_b", "x": {"inbox_id":"inb_zz"}, "y": [{"inbox_id":"inb_a"}]}'
    assert protocol.named_inboxes(body, known) == ["inb_b", "inb_a"]
    assert protocol.named_inboxes(body, known, limit=1) == ["inb_b"]
    assert protocol.named_inboxes(b'{"inbox_id":"inb_\\u0061"}', known) == []  # only a hint
    utf16 = '{"inbox_id": "inb_c"}'.encode("utf-16")  # as the JSON decoder would read it
    assert protocol.named_inboxes(utf16, known) == ["inb_c"]


def test_named_inboxes_reads_a_bounded_number_of_ids() -> None:
    # A body naming unknown inboxes many times costs a bounded scan, not one step per name.
    body = b"[" + b'{"inbox_id":"inb_x"},' * 1000 + b'{"inbox_id":"inb_a"}]'
    assert protocol.named_inboxes(body, {"inb_a"}) == []


def test_json_nested_past_what_the_fast_encoder_writes_is_still_read() -> None:
    deep = b"[" * 300 + b"]" * 300
    value = protocol.loads_strict(deep)
    for _ in range(299):
        assert isinstance(value, list)
        (value,) = value
    assert value == []


@pytest.mark.parametrize(
    ("raw", "compact"),
    [
        (b'{"event":"message.received","n":[1,2.5,null,true],"s":"x"}', True),
        (b'{ "spaced" : "json" }', False),
        (b'{"a":1}\n', False),  # a newline after it: not one line as it is
        (b'{"s":"\\u00e9"}', False),  # an escape orjson writes as the character
        (b'{"big":123456789012345678901234567890}', False),
        (b'{"f":1E5}', False),
    ],
)
def test_only_bytes_written_back_unchanged_are_compact(raw: bytes, compact: bool) -> None:
    data, found = protocol.loads_checked(raw)
    assert (data, found) == (json.loads(raw), compact)
    frame = protocol.parse_server_frame(raw) if b'"event"' in raw else None
    if frame is not None:
        assert frame.compact is compact
