"""``route-test`` shows an event's own fields, which a stranger wrote: its human output escapes
what could drive the operator's terminal (an OSC 52 clipboard write, a bell) or show text
reversed (U+202E), as every other command does; its ``--json`` output escapes them as JSON does
and reads back as given. Run as users run it: a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import bridge, webhook_only, write

HOSTILE_ID = "evt_\x1b]52;c;Z290Y2hh\x07\u202eoops"
HOSTILE_INBOX = "inb_\u2066x\x1b[2J"
HOSTILE_TYPE = "message.received\r\x1b[1A"


def hostile_event(tmp_path: Path) -> Path:
    event = tmp_path / "hostile.json"
    # json.dumps escapes them in the file; the bridge's parser turns them back into characters.
    event.write_text(json.dumps({
        "event": HOSTILE_TYPE, "event_id": HOSTILE_ID, "inbox_id": HOSTILE_INBOX,
        "message": {"from": "a@example.org", "to": "b@example.org"},
    }))  # fmt: skip
    routes = [{"name": "all", "sinks": ["audit"]}]
    write(tmp_path / "config.yaml", webhook_only(tmp_path, routes=routes))
    return event


def test_the_human_output_escapes_the_events_fields(tmp_path: Path) -> None:
    event = hostile_event(tmp_path)
    result = bridge(tmp_path, "route-test", "-c", "config.yaml", str(event))
    assert result.returncode == 0, result.stderr
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\u2066"):
        assert raw not in result.stdout
    first = result.stdout.splitlines()[0]
    assert first == (
        "event evt_\\x1b]52;c;Z290Y2hh\\x07\\u202eoops "
        "(message.received\\x0d\\x1b[1A, inbox inb_\\u2066x\\x1b[2J)"
    )


def test_the_json_output_escapes_them_as_json_does(tmp_path: Path) -> None:
    event = hostile_event(tmp_path)
    result = bridge(tmp_path, "route-test", "-c", "config.yaml", str(event), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()  # every control, bidi and other non-ASCII character escaped
    assert "\\u001b]52" in result.stdout
    assert json.loads(result.stdout)["event_id"] == HOSTILE_ID
