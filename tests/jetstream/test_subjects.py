"""Subject templates: rendering, escaping hostile fields, coverage by the stream's subjects."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.nats import subjects

SAFE = "[A-Za-z0-9_-]+"


def test_the_default_template_renders_each_field_as_one_token() -> None:
    fields = {"inbox_id": "inb_support", "event": "message.received", "thread_id": None}
    assert subjects.render(subjects.DEFAULT_TEMPLATE, fields) == (
        "openmail.inb_support.message_received"
    )
    assert subjects.render("x.{thread_id}.{source}", {"source": "webhook"}) == "x._none.webhook"
    assert subjects.render("x.{inbox_id}", {"inbox_id": ""}) == "x._none"


@pytest.mark.parametrize(
    "hostile",
    ["a.b", ">", "*", "inb.>", "x y", "a\r\nPUB evil 1", "ü.ñ", "..", "\x00", "a" * 500],
)
def test_a_hostile_inbox_id_stays_one_safe_token(hostile: str) -> None:
    subject = subjects.render(subjects.DEFAULT_TEMPLATE, {"inbox_id": hostile, "event": "e"})
    first, inbox, event = subject.split(".")
    assert (first, event) == ("openmail", "e")
    assert inbox
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in inbox)
    assert len(inbox) <= subjects.MAX_FIELD
    assert subjects.covers("openmail.*.*", subject)


# A busy machine (the suite runs beside real servers) must not fail the run for slow drawing.
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(subjects.FIELDS)), st.none() | st.text()))
def test_no_rendering_ever_escapes_the_template_filter(fields: dict[str, str | None]) -> None:
    template = "openmail.{inbox_id}.{event}.{thread_id}.{source}"
    subject = subjects.render(template, fields)
    assert subjects.is_subject(subject)
    assert subjects.covers(subjects.filter_of(template), subject)
    assert "*" not in subject
    assert ">" not in subject


@pytest.mark.parametrize(
    ("pattern", "subject", "covered"),
    [
        ("openmail.>", "openmail.*.*", True),
        ("openmail.>", "openmail.*", True),
        ("openmail.>", "openmail", False),
        ("openmail.*", "openmail.*.*", False),
        ("openmail.*.*", "openmail.*.*", True),
        ("openmail.inb_a.*", "openmail.*.*", False),
        ("openmail.*.*", "openmail.>", False),
        (">", "anything.at.all", True),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
    ],
)
def test_coverage(pattern: str, subject: str, covered: bool) -> None:
    assert subjects.covers(pattern, subject) is covered


@pytest.mark.parametrize(
    "template",
    ["openmail..{event}", "openmail.{nope}", "openmail.*", "openmail.>", "a.{event!r}", "a b", "{"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        subjects.validate_template(template)
