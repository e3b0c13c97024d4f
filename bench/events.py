"""Benchmark events: realistic ``message.received`` payloads and the stages that carry them.

Every event id is ``evt_bench_<stage tag>_<index>``, so an observer that sees a line (or a frame)
knows which stage and which send time it belongs to: send times are tracked by event id, not written
into the payload, which keeps the payload exactly the documented shape.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

EVENT_ID_RE: Final = re.compile(rb'"event_id":\s?"evt_bench_([a-z0-9]+)_(\d+)"')
"""Finds a benchmark event id in a JSON line, compact (the bridge) or spaced (``json.dumps``)."""

_BODY: Final = (
    "Hi team, I ordered the blue standing desk last Tuesday and the tracking page has not "
    "changed since Thursday. Could you check whether it left the warehouse, and if it is "
    "delayed, whether I can switch to the grey model that shows as in stock? I need it set up "
    "before the end of the month. Thanks for your help, and have a good week."
)

# The documented event shape (protocol notes, section 6), about 900 bytes with one attachment.
_TEMPLATE: Final = (
    '{"event":"message.received","event_id":"evt_bench_%(tag)s_%(i)d",'
    '"occurred_at":"%(now)s","delivered_at":"%(now)s","attempt":1,'
    '"inbox_id":"inb_bench_%(inbox)d","thread_id":"thr_bench_%(tag)s_%(i)d",'
    '"message":{"id":"msg_bench_%(tag)s_%(i)d","rfc_message_id":"<%(tag)s.%(i)d@mail.example.com>",'
    '"from":"Customer %(i)d <customer%(i)d@example.com>","to":"support@openmail.sh","cc":[],'
    '"subject":"Order %(i)d: where is my desk?","body_text":"' + _BODY + '",'
    '"attachments":[{"filename":"receipt.pdf","contentType":"application/pdf","sizeBytes":45000,'
    '"url":"https://api.openmail.sh/v1/attachments/msg_bench_%(tag)s_%(i)d/receipt.pdf",'
    '"parsedText":"Receipt 2847 Amount 1250.00","extractionMethod":"pdf"}],'
    '"received_at":"%(now)s"}}'
)
INBOXES: Final = 8


def iso_now() -> str:
    """Now as OpenMail writes it: ISO-8601 UTC with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def event_body(tag: str, index: int, now: str) -> bytes:
    """The JSON payload of event ``index`` of stage ``tag``, stamped ``now``."""
    values = {"tag": tag, "i": index, "now": now, "inbox": index % INBOXES}
    return (_TEMPLATE % values).encode()


def _zeros(count: int) -> array[int]:
    return array("q", bytes(8 * count))


@dataclass(eq=False)
class Stage:
    """``count`` events pushed together: when each was sent and when each landed (monotonic ns).

    ``time.monotonic_ns`` is CLOCK_MONOTONIC on Linux, one clock for every process, so a time taken
    in a client subprocess compares with one taken here. 0 means "not (yet)".
    """

    tag: str
    count: int
    sent_ns: array[int] = field(init=False, repr=False)
    landed_ns: array[int] = field(init=False, repr=False)
    sent: int = 0
    landed: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]+", self.tag):
            raise ValueError(f"stage tag must be lowercase letters and digits: {self.tag!r}")
        self.sent_ns = _zeros(self.count)
        self.landed_ns = _zeros(self.count)

    def body(self, index: int, now: str) -> bytes:
        return event_body(self.tag, index, now)

    def mark_landed(self, index: int, at_ns: int) -> None:
        if not 0 <= index < self.count:
            return
        if self.landed_ns[index]:
            self.duplicates += 1
            return
        self.landed_ns[index] = at_ns
        self.landed += 1

    @property
    def complete(self) -> bool:
        return self.landed >= self.sent
