"""The one-line event format the file and stdout sinks write: one JSON object per line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import orjson

from bridge.errors import PermanentDeliveryError

if TYPE_CHECKING:
    from bridge.store import Delivery

LineFormat = Literal["payload", "envelope"]
"""``payload``: the event as received; ``envelope``: wrapped with its source and receipt time."""


def format_line(delivery: Delivery, line_format: LineFormat) -> bytes:
    """One event as one UTF-8 JSON line, newline included.

    ``payload``: the event object as received, compacted (key order and values kept).
    ``envelope``: ``{"source", "received_at", "payload"}`` around it.

    Raises:
        PermanentDeliveryError: the payload is not JSON (retrying cannot change that).
    """
    if line_format == "payload":
        if delivery.compact:  # checked as it was parsed on its way in
            return delivery.payload + b"\n"
        # The common case, at a fraction of the standard library's cost: a payload that orjson
        # writes back byte for byte is compact JSON already, and is written as it came. Anything
        # else (spaces, escapes, an integer past 64 bits, which orjson reads as a float, a lone
        # surrogate) takes the standard path below, which decides what is writable.
        try:
            if orjson.dumps(orjson.loads(delivery.payload)) == delivery.payload:
                return delivery.payload + b"\n"
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            pass
    try:
        data: object = json.loads(delivery.payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentDeliveryError(
            f"event {delivery.event_id}: payload is not JSON: {exc}"
        ) from None
    except RecursionError:
        raise PermanentDeliveryError(
            f"event {delivery.event_id}: payload is nested too deeply"
        ) from None
    if line_format == "envelope":
        data = {
            "source": delivery.origin.value,
            "received_at": iso_utc(delivery.received_at),
            "payload": data,
        }
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise PermanentDeliveryError(
            f"event {delivery.event_id}: payload is nested too deeply"
        ) from None
    except ValueError:  # NaN, Infinity, or a number too large for a float: not JSON out
        raise PermanentDeliveryError(
            f"event {delivery.event_id}: payload has a number JSON cannot carry"
        ) from None
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800") is legal JSON but not UTF-8: keep it escaped, as it came.
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def iso_utc(timestamp: float) -> str:
    """Unix time as ISO-8601 UTC with milliseconds and ``Z``: ``2026-02-24T10:05:00.012Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
