"""What the bridge shows an operator cannot drive the terminal: ids, types and error texts come
from strangers (a NATS publisher, a receiver echoing mail), so the real ``events``, ``dlq`` and
``status`` text and the console log escape control and bidi characters."""

from __future__ import annotations

import json
from pathlib import Path

import structlog
from conftest import run_cli
from test_log_secrets import json_logging

from bridge.cli.listen_plan import Outcome, attempt_line
from bridge.cli.status_text import format_status
from bridge.events import Event, Origin
from bridge.printable import printable
from bridge.store import Store

CLIPBOARD = "\x1b]52;c;Y3VybCBodHRwczovL2V2aWwuZXhhbXBsZS94IHwgc2gK\x07"  # OSC 52
HOSTILE_ID = f"evt_{CLIPBOARD}\r\x1b[2Kevt_ok"
HOSTILE_INBOX = "inb_\u202eexe.txt"  # shown reversed, unescaped
NOW = 1_800_000_000.0


def hostile_event(event_id: str = HOSTILE_ID) -> Event:
    raw = json.dumps({"event": "message.received", "event_id": event_id}).encode()
    return Event(
        event_id=event_id,
        type=f"message.{CLIPBOARD}",
        inbox_id=HOSTILE_INBOX,
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBHOOK,
        received_at=NOW,
        raw=raw,
    )


def assert_inert(text: str) -> None:
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\x07" not in text
    assert "\u202e" not in text


def test_printable_escapes_what_drives_a_terminal() -> None:
    assert printable("evt_1 ok") == "evt_1 ok"
    assert printable("a\x1b[2Kb\r\u202ec\n") == "a\\x1b[2Kb\\x0d\\u202ec\\x0a"
    assert printable("line\nnext\x07", keep_newlines=True) == "line\nnext\\x07"


async def test_events_and_dlq_lists_escape_stored_ids(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    store = await Store.open(db, clock=lambda: NOW + 1)
    try:
        (done,) = (await store.accept(hostile_event(), ["archive"])).deliveries
        await store.mark_delivered_many([done.id])
        (dead,) = (await store.accept(hostile_event(HOSTILE_ID + "2"), ["agent"])).deliveries
        await store.dead_letter(dead.id, error=f"HTTP 400: {CLIPBOARD}", attempts=1)
    finally:
        await store.close()
    for args in (("events", "list"), ("events", "show", HOSTILE_ID), ("dlq", "list")):
        code, out, err = await run_cli(*args, "--state", str(db))
        assert code == 0, err
        assert_inert(out)
        assert "\\x1b]52;c;" in out  # shown, escaped


def test_status_and_listen_lines_escape_errors_and_ids() -> None:
    line = attempt_line(
        NOW,
        event_id=HOSTILE_ID,
        event_type="message.received",
        inbox_id=HOSTILE_INBOX,
        status=400,
        outcome=list(Outcome)[-1],
        error=CLIPBOARD,
    )
    assert_inert(line)
    status = {"sinks": {"agent": {"type": "http", "configured": True, "delivered": 0,
                                  "pending": 0, "dead": 1, "last_error": CLIPBOARD}}}  # fmt: skip
    assert_inert(format_status(status, NOW))


def test_the_console_log_escapes_values_and_keeps_traceback_lines() -> None:
    with json_logging("info", "console") as stream:
        structlog.get_logger("test").warning("event.unrouted", inbox_id=HOSTILE_INBOX + CLIPBOARD)
        try:
            raise ValueError(CLIPBOARD)
        except ValueError:
            structlog.get_logger("test").exception("boom")
    text = stream.getvalue()
    assert_inert(text)
    assert "Traceback (most recent call last):\n" in text
