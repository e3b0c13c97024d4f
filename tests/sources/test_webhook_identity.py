"""The webhook listener and event identity, over real HTTP into a real bridge: a signed body is
recognised by what its signature covers, not by the unsigned ``X-Event-Id``, and a known id with
other content is answered like a duplicate, quarantined and never delivered."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import events_named, read_lines, wait_until
from test_webhook import bridge_hook, event_body, signed_headers


def counted(hook: Any, name: str) -> float:
    value = hook.sup.metrics.registry.get_sample_value(
        f"openmail_bridge_{name}_total", {"source": "webhook"}
    )
    return 0.0 if value is None else value


async def test_captured_body_replayed_with_fresh_event_ids_is_delivered_once(
    tmp_path: Path,
) -> None:
    body = event_body(event_id=None)  # the body carries no event_id: only the header names it
    captured = signed_headers(body, event_id="evt_original")
    lines = tmp_path / "events.jsonl"
    async with bridge_hook(tmp_path) as hook:
        code, data, _ = await hook.post(body, captured)
        assert (code, data["duplicate"]) == (200, False)
        await wait_until(lambda: len(read_lines(lines)) == 1)

        # The same signed bytes and signature, each time under a fresh X-Event-Id.
        for n in range(3):
            code, data, _ = await hook.post(body, captured | {"X-Event-Id": f"evt_fresh_{n}"})
            assert (code, data["duplicate"]) == (200, True), data
        # OpenMail's own retry: new attempt and delivered_at, so new bytes and a new signature.
        retry = event_body(event_id=None, attempt=2, delivered_at="2026-02-24T10:05:30.000Z")
        code, data, _ = await hook.post(retry, signed_headers(retry, event_id="evt_retry"))
        assert (code, data["duplicate"]) == (200, True), data

        assert counted(hook, "events_duplicate") == 4
        assert counted(hook, "events_received") == 1
    # Stopped: every delivery the bridge held has been made, and there was one.
    assert [line.get("event_id") for line in read_lines(lines)] == [None]
    assert [json.dumps(line).encode() for line in read_lines(lines)] == [
        json.dumps(json.loads(body)).encode()
    ]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"message": {"from": "mallory@example.com", "subject": "pay this"}}, "content_mismatch"),
        ({"inbox_id": "inb_demo_sales"}, "inbox_mismatch"),
    ],
)
async def test_known_id_with_other_content_is_a_quarantined_duplicate_answer(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    original = event_body("evt_1")
    conflicting = event_body("evt_1", attempt=2, **changes)
    lines = tmp_path / "events.jsonl"
    async with bridge_hook(tmp_path) as hook:
        assert hook.sup.store is not None
        code, data, _ = await hook.post(original, signed_headers(original))
        assert (code, data["duplicate"]) == (200, False)
        with structlog.testing.capture_logs() as logs:
            # Signed a second later: a fresh, valid request, not a byte-for-byte replay.
            headers = signed_headers(conflicting, timestamp=int(time.time()) + 1)
            code, data, _ = await hook.post(conflicting, headers)
        # Answered like a duplicate: OpenMail has nothing to retry.
        assert (code, data) == (200, {"ok": True, "event_id": "evt_1", "duplicate": True})
        (logged,) = events_named(logs, "event.conflict")
        assert (logged["event_id"], logged["source"], logged["reason"]) == (
            "evt_1",
            "webhook",
            reason,
        )
        assert counted(hook, "events_conflict") == 1
        assert counted(hook, "events_duplicate") == 0
        (quarantined,) = await hook.sup.store.quarantine_list()
        assert (quarantined.event_id, quarantined.reason) == ("evt_1", reason)
        assert quarantined.payload == conflicting
        await wait_until(lambda: len(read_lines(lines)) == 1)
    assert read_lines(lines) == [json.loads(original)]  # the conflicting copy never went out
