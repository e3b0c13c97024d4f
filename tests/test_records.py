"""``@record`` values behave as the frozen dataclasses they replace, for everything but cost."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.events import Event, Origin
from bridge.records import record


@record(kw_only=True)
class Point:
    x: int
    label: str = dataclasses.field(default="", repr=False)


def test_a_record_compares_hashes_and_copies_by_its_fields() -> None:
    a, b = Point(x=1, label="a"), Point(x=1, label="a")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != Point(x=2, label="a")
    assert dataclasses.replace(a, x=2) == Point(x=2, label="a")
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "label"]
    assert repr(a) == "Point(x=1)"
    with pytest.raises(AttributeError):
        a.other = 1  # type: ignore[attr-defined]  # slotted: no attribute beyond the fields
    with pytest.raises(TypeError):
        Point(1)  # type: ignore[misc]  # keyword-only, as declared


def test_events_stay_usable_as_set_members_and_keys() -> None:
    def event(raw: bytes) -> Event:
        return Event(event_id="evt_1", type="t", inbox_id=None, thread_id=None, sender=None,
                     recipient=None, origin=Origin.WEBHOOK, received_at=0.0, raw=raw)  # fmt: skip

    assert len({event(b"{}"), event(b"{}"), event(b"[]")}) == 2
    assert event(b"{}").dedup_key == "evt_1"  # set after init, as before


def test_whether_a_payload_is_known_compact_is_not_part_of_a_values_identity() -> None:
    from bridge.store import Delivery

    def delivery(*, compact: bool) -> Delivery:
        return Delivery(id=1, seq=1, sink="s", event_id="e", type="t", inbox_id=None,
                        thread_id=None, origin=Origin.WEBHOOK, received_at=0.0, payload=b"{}",
                        attempts=0, last_error=None, compact=compact)  # fmt: skip

    assert delivery(compact=True) == delivery(compact=False)
    assert hash(delivery(compact=True)) == hash(delivery(compact=False))
