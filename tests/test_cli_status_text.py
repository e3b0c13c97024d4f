"""``status`` as text, from literal ``/status`` reports: the NATS block in the states a running
bridge rarely shows on cue (a stream check that failed, a consumer never read, errors), and the
WebSocket cursor only where there is a WebSocket."""

from __future__ import annotations

from typing import Any

from bridge.cli.status_text import format_status

NOW = 1_800_000_000.0


def nats_report(**nats: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "connection": {
            "state": "connected",
            "server": "nats://10.0.0.5:4222",
            "servers": ["nats://10.0.0.5:4222", "nats://***@10.0.0.6:4222"],
            "connected_since": NOW - 90,
            "reconnects": 0,
            "last_error": None,
        },
        "stream": {
            "name": "OPENMAIL",
            "check": "valid",
            "problem": None,
            "warnings": [],
            "messages": 12,
            "last_seq": 40,
        },
        "publishes": {},
        "consumer": None,
    }
    block.update(nats)
    return {"state": "ready", "parts": {"nats": "connected"}, "websocket": None, "nats": block}


def shown(report: dict[str, Any]) -> list[str]:
    return format_status(report, NOW).splitlines()


def test_a_connected_edge_shows_where_the_stream_and_each_sink_s_publishes() -> None:
    report = nats_report(
        publishes={
            "bus": {"subject": "openmail.{inbox_id}.{event}", "acked": 7, "duplicate": 1,
                    "failed": 2, "last_seq": 40},
        }
    )  # fmt: skip
    lines = shown(report)
    start = lines.index("nats:")
    assert lines[start + 1 : start + 4] == [
        "  server: nats://10.0.0.5:4222, since 1m 30s ago (2027-01-15 07:58:30 UTC)",
        "  stream OPENMAIL: valid, 12 messages, last sequence 40",
        "  publishes bus (openmail.{inbox_id}.{event}): acked 7, duplicate 1, failed 2",
    ]
    assert not [line for line in lines if "consumer" in line]


def test_a_bridge_not_connected_names_its_servers_and_the_last_error() -> None:
    report = nats_report()
    report["nats"]["connection"].update(
        state="disconnected", server=None, connected_since=None, reconnects=3,
        last_error="nats: no servers available for connection",
    )  # fmt: skip
    report["nats"]["stream"].update(check="unknown", messages=None, last_seq=None)
    lines = shown(report)
    start = lines.index("nats:")
    assert lines[start + 1 : start + 5] == [
        "  servers: nats://10.0.0.5:4222, nats://***@10.0.0.6:4222 (not connected)",
        "  reconnects: 3",
        "  last error: nats: no servers available for connection",
        "  stream OPENMAIL: unknown",
    ]


def test_a_stream_check_s_problem_and_warnings_are_shown() -> None:
    report = nats_report()
    report["nats"]["stream"].update(
        check="invalid",
        problem="stream OPENMAIL has subjects [other.>], which do not cover openmail.>",
        warnings=["duplicate window 1m is shorter than the configured 10m"],
    )
    lines = shown(report)
    at = lines.index("  stream OPENMAIL: invalid, 12 messages, last sequence 40")
    assert lines[at + 1 : at + 3] == [
        "    problem: stream OPENMAIL has subjects [other.>], which do not cover openmail.>",
        "    warning: duplicate window 1m is shorter than the configured 10m",
    ]


def test_a_sidecar_shows_its_consumer_and_what_failed_last() -> None:
    consumer = {
        "state": "consumer_invalid", "stream": "OPENMAIL", "consumer": "agent-a", "acked": 5,
        "terminated": 1, "unacked": 0, "held": 2, "pending": None, "ack_pending": None,
        "redelivered": None, "last_error": "max_deliver is 3, not -1 (unlimited)",
    }  # fmt: skip
    lines = shown(nats_report(consumer=consumer))
    at = lines.index(
        "  consumer agent-a: consumer_invalid, pending unknown, ack pending unknown, "
        "redelivered unknown"
    )
    assert lines[at + 1 : at + 3] == [
        "    acked 5, terminated 1, unacked 0, held 2",
        "    last error: max_deliver is 3, not -1 (unlimited)",
    ]
    assert not [line for line in lines if line.startswith("cursor:")]


def test_the_cursor_is_shown_where_there_is_a_websocket() -> None:
    websocket = {"state": "subscribed", "reason": None}
    assert "cursor: evt_1" in shown({"websocket": websocket, "cursor": "evt_1"})
    assert "cursor: none yet (no WebSocket event stored)" in shown({"websocket": websocket})
    assert not [line for line in shown({"websocket": None}) if line.startswith("cursor:")]


def test_text_from_the_server_is_escaped() -> None:
    report = nats_report()
    report["nats"]["connection"]["last_error"] = "boom\x1b]52;c;ZXZpbA==\x07"
    report["nats"]["stream"]["problem"] = "bad\x1b[2J"
    text = format_status(report, NOW)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "  last error: boom\\x1b]52;c;ZXZpbA==\\x07" in text.splitlines()  # shown, escaped
    assert "    problem: bad\\x1b[2J" in text.splitlines()


def test_mail_a_sidecar_missed_is_shown_only_when_it_did() -> None:
    consumer = {
        "state": "consuming", "stream": "OPENMAIL", "consumer": "agent-a", "acked": 5,
        "terminated": 0, "unacked": 0, "held": 0, "skipped": 0, "delivered_elsewhere": 0,
        "pending": 0, "ack_pending": 0, "redelivered": 0, "last_error": None,
    }  # fmt: skip
    assert not [line for line in shown(nats_report(consumer=consumer)) if "missed" in line]
    consumer.update(skipped=3, delivered_elsewhere=7)
    lines = shown(nats_report(consumer=consumer))
    at = lines.index("    acked 5, terminated 0, unacked 0, held 0")
    assert lines[at + 1] == (
        "    missed: 3 skipped (the stream removed them before they were fetched); "
        "7 delivered to another client of this consumer"
    )


def test_the_disk_under_the_spool_is_shown_with_its_floor() -> None:
    spool = {"bytes": 1024, "max_bytes": 4096, "writable": True, "has_room": True}
    lines = shown({"spool": {**spool, "free_disk": 3 << 30, "disk_size": 8 << 30, "min_free": 0}})
    at = lines.index("spool: 1 KiB of 4 KiB (25.0%)")
    assert lines[at + 1] == "  disk: 3 GiB free of 8 GiB"
    lines = shown({"spool": {**spool, "free_disk": 3 << 30, "disk_size": 8 << 30,
                             "min_free": 64 << 20}})  # fmt: skip
    assert "  disk: 3 GiB free of 8 GiB, min_free 64 MiB" in lines
    unreadable = shown({"spool": {**spool, "free_disk": None, "disk_size": None, "min_free": 0}})
    assert not [line for line in unreadable if "disk:" in line]


def test_a_full_spool_names_the_bound_that_holds() -> None:
    """Under max_bytes, a full spool is the next event not fitting the room left, or the disk at
    its floor: the line names the one that holds, as the disk figures show it."""
    full = {"max_bytes": 64 << 10, "writable": True, "has_room": False, "disk_size": 8 << 30}
    floor = 256 << 20

    def line(**spool: object) -> str:
        (found,) = [x for x in shown({"spool": {**full, **spool}}) if x.startswith("spool:")]
        return found

    assert line(bytes=65_498, free_disk=3 << 30, min_free=floor) == (
        "spool: 64 KiB of 64 KiB (99.9%), FULL (state.max_bytes: 38 B left, too little for the "
        "next event)"
    )
    assert line(bytes=64 << 10, free_disk=3 << 30, min_free=floor) == (
        "spool: 64 KiB of 64 KiB (100.0%), FULL (state.max_bytes)"
    )
    at_floor = "spool: 1 KiB of 64 KiB (1.6%), FULL (state.min_free: the disk is at its floor)"
    assert line(bytes=1024, free_disk=floor + (1 << 20), min_free=floor) == at_floor
    assert line(bytes=1024, free_disk=floor - 4096, min_free=floor) == at_floor
    # No floor kept (min_free: 0), or a disk that cannot be read: max_bytes is the only bound.
    for disk in ({"free_disk": 1 << 20, "min_free": 0}, {"free_disk": None, "min_free": floor}):
        assert line(bytes=65_000, **disk).endswith(
            "FULL (state.max_bytes: 536 B left, too little for the next event)"
        )
    # A bridge older than the disk figures: either bound may hold.
    assert line(bytes=1024).endswith("FULL (state.max_bytes or state.min_free)")
