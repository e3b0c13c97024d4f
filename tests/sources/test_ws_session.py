"""bridge.sources.ws_session with literal frames: what is sent, what each frame means, when to
subscribe again, how a close is classified, and how a failure is reported. No socket, no clock."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable

import pytest

from bridge.backoff import Pace
from bridge.errors import SpoolFullError
from bridge.protocol import REPLAY_LIMIT, CloseClass
from bridge.sources.ws_session import (
    STOPPING,
    ConnectionState,
    Deliver,
    Disconnect,
    DisconnectKind,
    DownLog,
    Health,
    Invalid,
    InvalidReason,
    ResetCursor,
    ServerError,
    Session,
    Subscribed,
    SubscribeError,
)

SUBSCRIBED = '{"type":"subscribed","inbox_ids":[],"event_types":[]}'
NOW = 1_800_000_000.0  # when 'subscribed' arrives, as a Unix time
PAST = "2020-01-01T00:00:00.000Z"  # well before NOW: a replayed event
FUTURE = "2030-01-01T00:00:00.000Z"  # after NOW: a live event


def session(cursor: str | None = None, inboxes: tuple[str, ...] = ()) -> Session:
    return Session(inboxes, ("message.received",), cursor, max_body=2048)


def event(event_id: str, occurred_at: str = FUTURE) -> str:
    return (
        f'{{"event":"message.received","event_id":"{event_id}",'
        f'"occurred_at":"{occurred_at}","inbox_id":"inb_1"}}'
    )


def subscribed(s: Session) -> Session:
    assert s.receive(SUBSCRIBED, NOW) == Subscribed(s.cursor)
    return s


# --- what is sent --------------------------------------------------------------------------------


def test_subscribe_carries_filters_and_cursor() -> None:
    assert json.loads(session("evt_9", ("inb_1",)).subscribe()) == {
        "type": "subscribe",
        "inbox_ids": ["inb_1"],
        "event_types": ["message.received"],
        "last_event_id": "evt_9",
    }
    assert "last_event_id" not in json.loads(session().subscribe())


# --- what a frame means --------------------------------------------------------------------------


def test_events_before_and_after_subscribed_are_delivered() -> None:
    s = session()
    early = s.receive(event("evt_early"), NOW)
    assert isinstance(early, Deliver)
    assert early.event.event_id == "evt_early"
    assert not s.subscribed
    subscribed(s)
    live = s.receive(event("evt_live"), NOW)
    assert isinstance(live, Deliver)
    assert (live.event.event_id, live.next_page, live.replay_limit) == ("evt_live", None, False)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("this is not json", InvalidReason.NOT_JSON),
        ("[1, 2, 3]", InvalidReason.NOT_JSON),
        ('{"neither": "type nor event"}', InvalidReason.NOT_JSON),
        ('{"type": "surprise"}', InvalidReason.UNKNOWN_TYPE),
        ('{"type": "event", "event": "x", "event_id": "evt_1"}', InvalidReason.UNKNOWN_TYPE),
        ('{"event": "message.received"}', InvalidReason.BAD_EVENT),
        ('{"event": "message.received", "event_id": 42}', InvalidReason.BAD_EVENT),
    ],
)
def test_invalid_frames_are_named_in_both_phases(frame: str, reason: InvalidReason) -> None:
    s = session()
    before = s.receive(frame, NOW)
    assert isinstance(before, Invalid)
    assert before.reason is reason
    subscribed(s)
    after = s.receive(frame, NOW)
    assert isinstance(after, Invalid)
    assert after.reason is reason


def test_binary_frames_are_invalid() -> None:
    assert Session.binary(7) == Invalid(InvalidReason.BINARY, "7 bytes")


@pytest.mark.parametrize("frame", ['{"type":"pong"}', '{"type":"unsubscribed"}'])
def test_harmless_control_frames_need_nothing(frame: str) -> None:
    s = session()
    assert s.receive(frame, NOW) is None
    subscribed(s)
    assert s.receive(frame, NOW) is None


def test_a_second_subscribed_is_only_an_answer_to_a_next_page() -> None:
    s = subscribed(session("evt_1"))
    assert s.receive(SUBSCRIBED, NOW + 5) is None


def test_an_error_means_a_failed_subscribe_before_and_a_server_error_after() -> None:
    s = session()
    assert s.receive('{"type":"error","message":"nope"}', NOW) == SubscribeError("nope")
    subscribed(s)
    assert s.receive('{"type":"error","message":"odd"}', NOW) == ServerError("odd")


def test_only_an_event_counts_in_the_frame_after_an_error() -> None:
    s = session()
    kept = s.receive_after_error(event("evt_x"))
    assert isinstance(kept, Deliver)
    assert kept.event.event_id == "evt_x"
    assert s.receive_after_error("garbage") is None
    assert s.receive_after_error('{"type":"surprise"}') is None
    bad = s.receive_after_error('{"event":"message.received"}')
    assert isinstance(bad, Invalid)
    assert bad.reason is InvalidReason.BAD_EVENT


# --- when to subscribe again ---------------------------------------------------------------------


def test_an_error_answering_a_cursor_resets_it_and_subscribes_without_it() -> None:
    s = session("evt_forgotten")
    decision = s.subscribe_failed("unknown last_event_id")
    assert isinstance(decision, ResetCursor)
    assert (decision.cursor, decision.message) == ("evt_forgotten", "unknown last_event_id")
    assert "last_event_id" not in json.loads(decision.frame)
    assert s.cursor is None
    assert subscribed(s).receive(SUBSCRIBED, NOW) is None
    # A second error, now without a cursor, is a plain failure.
    again = s.subscribe_failed("unknown last_event_id")
    assert again == Disconnect(DisconnectKind.TRANSIENT, "subscribe failed: unknown last_event_id")


def test_an_unowned_inbox_rejects_the_subscription_naming_the_inboxes() -> None:
    s = session("evt_1", ("inb_a", "inb_b"))
    decision = s.subscribe_failed("inbox inb_b is not owned by this API key")
    assert isinstance(decision, Disconnect)
    assert decision.kind is DisconnectKind.SUBSCRIBE_REJECTED
    assert "['inb_a', 'inb_b']" in decision.reason
    assert s.cursor == "evt_1"  # not taken for an unknown cursor


def test_an_auth_error_is_a_rejected_key() -> None:
    decision = session("evt_1").subscribe_failed("API key revoked")
    assert decision == Disconnect(DisconnectKind.KEY_REJECTED, "OpenMail said: API key revoked")


def test_replay_past_the_limit_asks_for_the_next_page_after_every_hundred() -> None:
    s = subscribed(session("evt_0", ("inb_1",)))
    actions = [s.receive(event(f"evt_{n}", PAST), NOW) for n in range(1, 2 * REPLAY_LIMIT + 1)]
    assert all(isinstance(a, Deliver) for a in actions)
    pages = [(i, a) for i, a in enumerate(actions, 1) if isinstance(a, Deliver) and a.next_page]
    assert [i for i, _ in pages] == [REPLAY_LIMIT, 2 * REPLAY_LIMIT]
    first = pages[0][1]
    assert first.replay_limit is True  # warned once, on the first page only
    assert pages[1][1].replay_limit is False
    assert first.next_page is not None
    assert json.loads(first.next_page) == {
        "type": "subscribe",
        "inbox_ids": ["inb_1"],
        "event_types": ["message.received"],
        "last_event_id": f"evt_{REPLAY_LIMIT}",
    }


def test_live_events_and_subscriptions_without_cursor_never_page() -> None:
    live = subscribed(session("evt_0"))
    no_cursor = subscribed(session())
    for n in range(REPLAY_LIMIT + 1):
        for s, occurred in ((live, FUTURE), (no_cursor, PAST)):
            action = s.receive(event(f"evt_{n}", occurred), NOW)
            assert isinstance(action, Deliver)
            assert action.next_page is None


def iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="milliseconds")


def spaced_event(event_id: str, occurred_at: str) -> str:
    """An event as a JSON encoder with spaces after separators writes it: valid, not compact."""
    body = {"event": "message.received", "event_id": event_id, "occurred_at": occurred_at}
    return json.dumps(body, indent=1)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(lambda n: spaced_event(f"evt_{n}", PAST), id="spaced JSON"),
        # Missed during the reconnect: a moment before the subscribe.
        pytest.param(lambda n: event(f"evt_{n}", iso(NOW - 0.2)), id="just before"),
        pytest.param(lambda n: event(f"evt_{n}", "not a time"), id="unreadable time"),
        pytest.param(lambda n: event(f"evt_{n}", "2020-01-01T00:00:00"), id="no zone"),
    ],
)
def test_a_full_replay_asks_for_the_next_page_whatever_its_layout_and_timing(
    frame: Callable[[int], str],
) -> None:
    s = subscribed(session("evt_0"))
    actions = [s.receive(frame(n), NOW) for n in range(1, REPLAY_LIMIT + 1)]
    assert all(isinstance(a, Deliver) for a in actions)
    last = actions[-1]
    assert isinstance(last, Deliver)
    assert last.next_page is not None
    assert json.loads(last.next_page)["last_event_id"] == f"evt_{REPLAY_LIMIT}"


def test_events_without_a_time_ask_for_one_page_at_most() -> None:
    # Off the protocol, but possible: nothing tells a replay from a live event then.
    s = subscribed(session("evt_0"))
    actions = [s.receive(event(f"evt_{n}", "not a time"), NOW) for n in range(1, 10 * REPLAY_LIMIT)]
    pages = [a for a in actions if isinstance(a, Deliver) and a.next_page is not None]
    assert len(pages) == 1


def test_events_without_a_time_stop_counting_once_a_live_one_came() -> None:
    s = subscribed(session("evt_0"))
    assert isinstance(s.receive(event("evt_live", FUTURE), NOW), Deliver)
    for n in range(REPLAY_LIMIT + 1):
        action = s.receive(event(f"evt_{n}", "not a time"), NOW)
        assert isinstance(action, Deliver)
        assert action.next_page is None


# --- how a close is classified -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (4001, DisconnectKind.KEY_REJECTED, "the API key was rejected"),
        (4008, DisconnectKind.TOO_MANY_CONNECTIONS, "the account has too many WebSocket conn"),
        (4029, DisconnectKind.RATE_LIMITED, "rate limited by OpenMail"),
        (1001, DisconnectKind.TRANSIENT, "connection closed"),
    ],
)
def test_the_close_frame_code_wins_over_the_transport(
    code: int, kind: DisconnectKind, reason: str
) -> None:
    s = session()
    s.peer_closed(code)
    closed = s.closed(1006)  # aiohttp's view when TCP dropped right after the close frame
    assert (closed.kind, closed.code) == (kind, code)
    assert closed.reason.startswith(reason)


def test_without_a_close_frame_the_transport_code_classifies() -> None:
    assert session().closed(None) == Disconnect(DisconnectKind.TRANSIENT, "connection closed", 1006)
    assert session().closed(4003).kind is DisconnectKind.KEY_REJECTED


def test_a_frame_past_max_body_names_the_setting() -> None:
    closed = session().closed(1009)
    assert closed.frame_too_large
    assert "openmail.webhook.max_body (2048 bytes)" in closed.reason


def test_a_close_for_new_configuration_says_so() -> None:
    closed = session().closed(1000, reconfiguring=True)
    assert closed.reason == "reconnecting with the new configuration"


def test_connection_failures_before_and_under_a_connection() -> None:
    assert Disconnect.handshake_refused(401).kind is DisconnectKind.KEY_REJECTED
    assert Disconnect.handshake_refused(503).reason == "upgrade refused with HTTP 503"
    assert Disconnect.unreachable(OSError("refused")).reason == "cannot connect: refused"
    failed = Disconnect.connection_failed(ConnectionResetError("reset"))
    assert (failed.kind, failed.code) == (DisconnectKind.TRANSIENT, 1006)
    pushed = Disconnect.pushed_back(SpoolFullError("full"), 512)
    assert (pushed.kind, pushed.room_needed) == (DisconnectKind.PUSHBACK, 512)
    assert Session.no_answer(0.5).reason == "no 'subscribed' within 0.5s"


@pytest.mark.parametrize(
    ("kind", "pace"),
    [
        (DisconnectKind.TRANSIENT, Pace.NORMAL),
        (DisconnectKind.RATE_LIMITED, Pace.SLOWER),
        (DisconnectKind.KEY_REJECTED, Pace.AT_CAP),
        (DisconnectKind.TOO_MANY_CONNECTIONS, Pace.AT_CAP),
        (DisconnectKind.SUBSCRIBE_REJECTED, Pace.AT_CAP),
        (DisconnectKind.PUSHBACK, Pace.NOW),
    ],
)
def test_each_kind_has_its_pace(kind: DisconnectKind, pace: Pace) -> None:
    assert kind.pace is pace
    assert kind.rejected is (pace is Pace.AT_CAP)
    assert bool(kind.hint) is kind.rejected


def test_close_classes_map_onto_kinds_by_their_words() -> None:
    assert {DisconnectKind.of(c).value for c in CloseClass} == {c.value for c in CloseClass}
    assert STOPPING.kind is DisconnectKind.STOPPING


# --- how a failure is reported -------------------------------------------------------------------


def test_health_logs_a_rejection_once_then_quietly() -> None:
    h = Health(since=0.0)
    rejected = Disconnect(DisconnectKind.KEY_REJECTED, "the API key was rejected", 4001)
    assert h.went_down(rejected, 1.0) is DownLog.REJECTED
    assert h.went_down(rejected, 2.0) is DownLog.STILL_REJECTED
    assert (h.state, h.since, h.attempts) == (ConnectionState.DOWN, 1.0, 2)
    assert h.status("evt_1")["reason"] == "the API key was rejected"
    assert h.came_up(3.0) is True
    assert h.status("evt_1") == {
        "state": "subscribed",
        "since": 3.0,
        "reason": None,
        "cursor": "evt_1",
        "last_event_at": None,
        "reconnect_attempts": 2,
        "possible_gaps": 0,
    }


def test_health_warns_on_going_down_and_informs_on_the_same_failure_again() -> None:
    h = Health(since=0.0)
    assert h.came_up(1.0) is False  # the first connection recovers from nothing
    drop = Disconnect(DisconnectKind.TRANSIENT, "connection closed", 1006)
    assert h.went_down(drop, 2.0) is DownLog.DISCONNECTED  # was up
    assert h.went_down(drop, 3.0) is DownLog.RETRYING
    other = Disconnect(DisconnectKind.TRANSIENT, "cannot connect: refused")
    assert h.went_down(other, 4.0) is DownLog.DISCONNECTED  # a new cause
    pushback = Disconnect.pushed_back(SpoolFullError("full"), 10)
    h.went_down(pushback, 5.0)
    assert h.state is ConnectionState.PAUSED


def test_health_after_a_long_connection_has_nothing_to_recover_from() -> None:
    h = Health(since=0.0)
    h.came_up(1.0)
    h.ended(100.0)
    assert (h.state, h.down_reason) == (ConnectionState.DOWN, None)
    assert h.came_up(101.0) is False
