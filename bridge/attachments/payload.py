"""An event's attachment list, read from its payload, and the payload written again with what
became of each attachment. Pure: bytes in, bytes out.

Only the attachment objects change: each gains ``local_path`` and ``sha256``, or ``reason``; its
other fields, the ``url`` included, and the rest of the event stay as they were (keys in their
order; the JSON is re-serialized, so its whitespace may differ from the bytes received).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bridge.attachments.rules import Outcome, Stored

ADDED_KEYS: Final = ("local_path", "sha256", "reason")
"""The keys the bridge sets on an attachment; a value the payload already had under one of them
is dropped, so the agent never reads a path the bridge did not write."""


class Malformed(enum.StrEnum):
    """An attachment list that cannot be enriched as a whole (the payload goes as received)."""

    NOT_A_LIST = "attachments_not_a_list"


@dataclass(frozen=True, slots=True)
class Listing:
    """The decoded payload of one event and its attachment objects, in order.

    ``items`` are the objects of ``message.attachments``, by their place in that list;
    ``skipped`` counts entries that are not objects (left as they are: nothing can be added to
    them).
    """

    document: dict[str, object]
    items: tuple[tuple[int, dict[str, object]], ...]
    skipped: int

    def __len__(self) -> int:
        return len(self.items)


def read(payload: bytes) -> Listing | Malformed | None:
    """The attachments of an event's ``payload``; None when there is nothing to enrich (not a
    JSON object, no ``message`` object, no attachments, or none that is an object)."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    message = document.get("message")
    if not isinstance(message, dict) or "attachments" not in message:
        return None
    attachments = message["attachments"]
    if attachments is None:
        return None
    if not isinstance(attachments, list):
        return Malformed.NOT_A_LIST
    items = tuple((i, item) for i, item in enumerate(attachments) if isinstance(item, dict))
    if not items:
        return None
    return Listing(document, items, len(attachments) - len(items))


def written(listing: Listing, outcomes: Sequence[Outcome]) -> bytes:
    """The payload with each attachment object's outcome (one per item, in order).

    Raises:
        ValueError: not one outcome per item.
    """
    if len(outcomes) != len(listing.items):
        raise ValueError(f"{len(outcomes)} outcomes for {len(listing.items)} attachments")
    message = listing.document["message"]
    assert isinstance(message, dict)  # read() checked it
    attachments = list(message["attachments"])
    for (index, item), outcome in zip(listing.items, outcomes, strict=True):
        attachments[index] = with_outcome(item, outcome)
    document = {**listing.document, "message": {**message, "attachments": attachments}}
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate ("\ud83d", an emoji cut in half) is legal JSON but not UTF-8: kept
        # escaped, as it came.
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def with_outcome(item: dict[str, object], outcome: Outcome) -> dict[str, object]:
    """``item`` with ``local_path`` and ``sha256`` (stored), or ``reason`` (not)."""
    kept = {key: value for key, value in item.items() if key not in ADDED_KEYS}
    if isinstance(outcome, Stored):
        return {**kept, "local_path": str(outcome.path), "sha256": outcome.sha256}
    return {**kept, "reason": outcome.value}
