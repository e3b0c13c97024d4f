"""Realistic generated OpenMail events: ``message.received`` mail and lifecycle notices (§6).

Content comes from a seedable :class:`random.Random`, so a seed reproduces the same mail; ids are
always fresh (``evt_``/``msg_``/``thr_`` plus random hex) so that two simulator runs never collide
in a bridge's de-duplication store. Senders use the reserved ``example.*`` domains.
"""

from __future__ import annotations

import enum
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bridge import protocol
from bridge.simulator.attachments import attachment_json

POD_ID: Final = "pod_demo"
ATTACHMENT_URL: Final = "https://api.openmail.sh/v1/attachments/{message_id}/{filename}"
LIFECYCLE_REASONS: Final = (
    "high_bounce_rate",
    "high_complaint_rate",
    "abuse",
    "pod_degraded",
    "manual_review",
    "other",
)


class Unset(enum.Enum):
    """Marks an argument that was not given (``None`` is meaningful for lifecycle fields)."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def iso_now() -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, the format OpenMail uses."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def inbox_address(inbox_id: str) -> str:
    """Simulated inbox address: ``inb_demo_support`` -> ``demo.support@sim.openmail.sh``."""
    local = inbox_id.removeprefix("inb_").replace("_", ".") or "inbox"
    return f"{local}@sim.openmail.sh"


@dataclass(frozen=True, slots=True)
class _Attachment:
    filename: str
    content_type: str
    size_bytes: int
    extraction_method: str
    parsed_text: str | None


_PEOPLE: Final = (
    ("Maria Gonzalez", "maria.gonzalez@example.com"),
    ("Kenji Watanabe", "kenji@example.org"),
    ("Aisha Okafor", "aisha.okafor@example.net"),
    ("Tom Becker", "t.becker@example.com"),
    ("Priya Raman", "priya@example.org"),
    ("Lucas Martin", "lucas.martin@example.net"),
    ("Sofia Rossi", "sofia.rossi@example.com"),
    ("Daniel Kim", "dkim@example.org"),
)

# (subject, body, attachment kinds) per scenario; {name} is the sender's first name.
_SCENARIOS: Final = (
    (
        "Order #{n} arrived damaged",
        "Hi,\n\nMy order #{n} arrived today but the box was crushed and the mug inside is broken. "
        "I attached a photo. Could you send a replacement?\n\nThanks,\n{name}",
        ("photo",),
    ),
    (
        "Invoice {n} - payment question",
        "Hello,\n\nWe received invoice {n} but the amount does not match the quote we agreed on. "
        "Can you check and send a corrected version?\n\nBest regards,\n{name}",
        ("invoice",),
    ),
    (
        "Pricing for 50 seats?",
        "Hi there,\n\nWe're evaluating your product for our team of about 50 people. Do you offer "
        "volume pricing or an annual plan? A short call next week would be great.\n\n{name}",
        (),
    ),
    (
        "Can't log in since the update",
        "Hi support,\n\nSince this morning's update I get 'session expired' right after "
        "logging in. I tried two browsers. Export of the error log attached.\n\nCheers,\n{name}",
        ("log",),
    ),
    (
        "Partnership proposal",
        "Hello,\n\nI lead partnerships at our company and think our customers would love an "
        "integration with yours. Deck attached; happy to talk whenever suits you.\n\n"
        "Kind regards,\n{name}",
        ("deck",),
    ),
    (
        "Usage report for Q{q}",
        "Hi,\n\nPlease find our usage export for Q{q} attached. Could you confirm the overage "
        "figures before we approve the renewal?\n\nThanks,\n{name}",
        ("csv",),
    ),
    (
        "Quick question about the API limits",
        "Hey,\n\nIs the 30 requests per 10 seconds limit per key or per connection? We are "
        "planning a migration and want to size our workers correctly.\n\n{name}",
        (),
    ),
    (
        "Site walkthrough recording",
        "Hi team,\n\nAs promised, here's the recording of yesterday's walkthrough plus the "
        "archive with the floor plans.\n\nBest,\n{name}",
        ("video", "archive"),
    ),
)

_REPLIES: Final = (
    "Thanks for the quick answer! That works for us.\n\n{name}",
    "Following up on this - any update?\n\n{name}",
    "One more thing: could you also cc my colleague on the next reply?\n\nThanks,\n{name}",
    "Perfect, I just tried it again and it works now.\n\n{name}",
)


def _attachment(kind: str, rng: random.Random, n: int) -> _Attachment:
    if kind == "invoice":
        text = f"Invoice #{n}\nAmount due: ${rng.randint(200, 5000):,}.00\nDue: net 30"
        return _Attachment(
            f"invoice-{n}.pdf", "application/pdf", rng.randint(30_000, 90_000), "pdf", text
        )
    if kind == "photo":
        text = "FRAGILE - THIS SIDE UP"
        return _Attachment(
            "IMG_2047.jpg", "image/jpeg", rng.randint(900_000, 3_000_000), "ocr", text
        )
    if kind == "log":
        text = "2026-02-24T09:12:03Z ERROR auth: session expired (token age 0s)\n" * 3
        return _Attachment("error-log.txt", "text/plain", len(text), "text", text)
    if kind == "deck":
        text = "Partnership overview\n1. Who we are\n2. Joint customers\n3. Integration plan"
        ctype = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
        return _Attachment(
            "partnership.pptx", ctype, rng.randint(400_000, 2_000_000), "office", text
        )
    if kind == "csv":
        text = "month,api_calls,overage\nJan,812340,0\nFeb,1032112,32112\nMar,998700,0\n"
        return _Attachment("usage.csv", "text/csv", len(text), "csv", text)
    if kind == "video":
        # Over the 10 MB extraction cap: no parsedText, extractionMethod says why.
        return _Attachment("walkthrough.mp4", "video/mp4", 48_000_000, "skipped_too_large", None)
    return _Attachment("floor-plans.zip", "application/zip", 2_400_000, "unsupported", None)


@dataclass(slots=True)
class _Thread:
    subject: str
    sender: tuple[str, str]


class MailFactory:
    """Builds event payloads; remembers threads, so a known ``thread_id`` gets a reply in it."""

    def __init__(self, inboxes: tuple[str, ...], seed: int | None = None) -> None:
        self._inboxes = inboxes
        self._rng = random.Random(seed)
        self._threads: dict[str, _Thread] = {}

    def message_event(
        self, *, inbox_id: str | None = None, thread_id: str | None = None, **overrides: object
    ) -> dict[str, object]:
        rng = self._rng
        inbox = inbox_id or rng.choice(self._inboxes)
        thread = self._threads.get(thread_id) if thread_id else None
        message_id = new_id("msg")
        if thread is not None:
            sender = thread.sender
            subject = (
                thread.subject if thread.subject.startswith("Re: ") else f"Re: {thread.subject}"
            )
            body = rng.choice(_REPLIES).format(name=sender[0].split()[0])
            kinds: tuple[str, ...] = ()
        else:
            sender = rng.choice(_PEOPLE)
            template, body_template, kinds = rng.choice(_SCENARIOS)
            n, q = rng.randint(1000, 9999), rng.randint(1, 4)
            subject = template.format(n=n, q=q)
            body = body_template.format(n=n, q=q, name=sender[0].split()[0])
            thread_id = thread_id or new_id("thr")
            self._threads[thread_id] = _Thread(subject, sender)
        n = rng.randint(1000, 9999)
        attachments = [self._attachment_json(_attachment(k, rng, n), message_id) for k in kinds]
        domain = sender[1].split("@", 1)[1]
        cc = [f"accounts@{domain}"] if rng.random() < 0.25 else []
        now = iso_now()
        message: dict[str, object] = {
            "id": message_id,
            "rfc_message_id": f"<{uuid.uuid4().hex}@mail.{domain}>",
            "from": f"{sender[0]} <{sender[1]}>",
            "to": inbox_address(inbox),
            "cc": cc,
            "subject": subject,
            "body_text": body,
            "attachments": attachments,
            "received_at": now,
        }
        extra_message = overrides.pop("message", None)
        if isinstance(extra_message, dict):
            message.update(extra_message)
        event: dict[str, object] = {
            "event": protocol.MESSAGE_RECEIVED,
            "event_id": new_id("evt"),
            "occurred_at": now,
            "inbox_id": inbox,
            "thread_id": thread_id,
            "message": message,
        }
        event.update(overrides)
        return event

    @staticmethod
    def _attachment_json(att: _Attachment, message_id: str) -> dict[str, object]:
        return attachment_json(
            filename=att.filename,
            content_type=att.content_type,
            size_bytes=att.size_bytes,
            url=ATTACHMENT_URL.format(message_id=message_id, filename=att.filename),
            parsed_text=att.parsed_text,
            extraction_method=att.extraction_method,
        )

    def lifecycle_event(
        self,
        kind: str = "inbox.suspended",
        *,
        inbox_id: str | Unset | None = UNSET,
        reason: str | Unset | None = UNSET,
    ) -> dict[str, object]:
        """A lifecycle notice: ``inbox_*`` null for ``pod.*``, ``reason`` null on reactivation.

        Raises:
            ValueError: ``kind`` is not one of the four lifecycle event types.
        """
        if kind not in protocol.LIFECYCLE_EVENT_TYPES:
            known = ", ".join(sorted(protocol.LIFECYCLE_EVENT_TYPES))
            raise ValueError(f"unknown lifecycle event {kind!r}; expected one of {known}")
        if isinstance(inbox_id, Unset):
            inbox_id = self._inboxes[0] if kind.startswith("inbox.") else None
        if isinstance(reason, Unset):
            reason = None if kind.endswith(".reactivated") else "high_bounce_rate"
        return {
            "event": kind,
            "event_id": new_id("evt"),
            "occurred_at": iso_now(),
            "inbox_id": inbox_id,
            "inbox_address": inbox_address(inbox_id) if inbox_id else None,
            "pod_id": POD_ID,
            "reason": reason,
        }
