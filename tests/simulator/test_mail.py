"""The simulator's generated events: ``message.received`` mail and lifecycle notices."""

from __future__ import annotations

import re

import pytest

from bridge.simulator import Simulator

from .conftest import (
    SALES,
    SUPPORT,
)

pytestmark = pytest.mark.timeout(20)


def test_message_event_shape(sim: Simulator) -> None:
    event = sim.message_event(inbox_id=SUPPORT)
    assert event["event"] == "message.received"
    assert str(event["event_id"]).startswith("evt_")
    assert str(event["thread_id"]).startswith("thr_")
    assert event["inbox_id"] == SUPPORT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(event["occurred_at"]))
    message = event["message"]
    assert isinstance(message, dict)
    assert str(message["id"]).startswith("msg_")
    assert re.fullmatch(r"<[^<>@]+@[^<>]+>", message["rfc_message_id"])
    assert re.fullmatch(r"[A-Z][\w. ]+ <[^@ ]+@example\.(com|org|net)>", message["from"])
    assert message["to"] == "demo.support@sim.openmail.sh"
    assert isinstance(message["cc"], list)
    assert message["subject"]
    assert message["body_text"]
    assert "body_html" not in message


def test_attachments_use_camel_case_and_extraction_fields(sim: Simulator) -> None:
    attachments = [
        att
        for _ in range(60)
        for att in sim.message_event()["message"]["attachments"]  # type: ignore[index]
    ]
    assert attachments
    methods = {att["extractionMethod"] for att in attachments}
    assert methods & {"pdf", "ocr", "office", "csv", "text"}
    assert methods & {"unsupported", "skipped_too_large"}
    for att in attachments:
        assert set(att) <= {
            "filename",
            "contentType",
            "sizeBytes",
            "url",
            "parsedText",
            "extractionMethod",
        }
        assert isinstance(att["sizeBytes"], int)
        assert att["url"].endswith("/" + att["filename"])
        failed = att["extractionMethod"] in {"unsupported", "pdf_error", "skipped_too_large"}
        assert ("parsedText" in att) is not failed


def test_known_thread_gets_a_reply_and_seed_reproduces_content(sim: Simulator) -> None:
    first = sim.message_event(inbox_id=SALES)
    reply = sim.message_event(inbox_id=SALES, thread_id=str(first["thread_id"]))
    assert reply["thread_id"] == first["thread_id"]
    assert reply["message"]["subject"].startswith("Re: ")  # type: ignore[index]
    assert reply["message"]["from"] == first["message"]["from"]  # type: ignore[index]
    a, b = Simulator(seed=3), Simulator(seed=3)
    subjects = [[s.message_event()["message"]["subject"] for _ in range(5)] for s in (a, b)]  # type: ignore[index]
    assert subjects[0] == subjects[1]
    assert a.message_event()["event_id"] != b.message_event()["event_id"]


def test_lifecycle_event_defaults(sim: Simulator) -> None:
    pod = sim.lifecycle_event("pod.suspended")
    assert (pod["inbox_id"], pod["inbox_address"], pod["reason"]) == (
        None,
        None,
        "high_bounce_rate",
    )
    inbox = sim.lifecycle_event("inbox.reactivated")
    assert (inbox["inbox_id"], inbox["reason"]) == (SUPPORT, None)
    with pytest.raises(ValueError, match="unknown lifecycle event"):
        sim.lifecycle_event("message.received")
