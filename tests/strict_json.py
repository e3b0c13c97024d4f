"""The JSON the bridge accepts, written independently of its code for the property tests'
oracles: RFC 8259 text with no key given twice in one object, no NaN or Infinity, and no number
too large for a float (1e400)."""

from __future__ import annotations

import json


def _pairs(items: list[tuple[str, object]]) -> dict[str, object]:
    if len({key for key, _ in items}) != len(items):
        raise ValueError("a key given twice")
    return dict(items)


def _constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large for a float")
    return value


def strict_loads(text: str | bytes) -> object:
    """Like ``json.loads``; raises ValueError for what the bridge refuses."""
    return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def usable_event_id(value: object) -> bool:
    """A non-empty string of valid Unicode, at most 256 bytes in UTF-8."""
    if not isinstance(value, str) or not value:
        return False
    try:
        return len(value.encode("utf-8")) <= 256
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \\ud800 escape can carry
        return False
