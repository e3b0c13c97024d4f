"""Subjects: the sink's template, rendered so that no event can publish outside the stream,
whether a stream's subjects cover what a template can publish, and whether a consumer's filter
can match anything the stream takes.

Pure: strings in, strings out. A template is a NATS subject whose tokens may hold ``{field}``
placeholders; a rendered field holds only ``[A-Za-z0-9_-]``, so it can never add a token, a
wildcard or whitespace to the subject.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Final

FIELDS: Final = frozenset({"inbox_id", "event", "thread_id", "source"})
"""The placeholders a subject template may use."""
NONE: Final = "_none"
"""What a null or empty field renders as."""
MAX_FIELD: Final = 128
"""Characters of a field kept: a subject travels in a protocol line of bounded length."""
DEFAULT_TEMPLATE: Final = "openmail.{inbox_id}.{event}"

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_LITERAL_TOKEN: Final = re.compile(r"[!-~]+")
"""Visible ASCII: what a literal token may hold (wildcards are refused separately)."""


def escape(value: str | None) -> str:
    """``value`` as one safe subject token: every character outside ``[A-Za-z0-9_-]`` becomes
    ``_``; null or empty becomes ``_none``. Two values may escape alike; the event id travels in
    the headers, never in the subject, so that costs no identity."""
    if not value:
        return NONE
    return _UNSAFE.sub("_", value[:MAX_FIELD])


def validate_template(template: str) -> None:
    """Raises ValueError naming what is wrong: an unknown field, a format spec, an empty token,
    a wildcard or a character a subject cannot hold."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a subject template: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in FIELDS:
            known = ", ".join("{" + f + "}" for f in sorted(FIELDS))
            raise ValueError(f"unknown field {{{name}}} in {template!r} (fields: {known})")
        if spec or conversion:
            raise ValueError(f"field {{{name}}} in {template!r} takes no format or conversion")
    for part in template.split("."):
        literal = "".join(text for text, *_ in string.Formatter().parse(part))
        if not part:
            raise ValueError(f"{template!r} has an empty token (two dots, or one at an end)")
        if literal and (not _LITERAL_TOKEN.fullmatch(literal) or "*" in literal or ">" in literal):
            raise ValueError(
                f"{template!r}: token {part!r} may hold visible ASCII only, no wildcard"
            )


def render(template: str, fields: Mapping[str, str | None]) -> str:
    """The subject for one event: each placeholder replaced by its escaped field."""
    return template.format_map({name: escape(fields.get(name)) for name in FIELDS})


def filter_of(template: str) -> str:
    """The subject filter covering every rendering of ``template``: each token holding a
    placeholder becomes ``*`` (a field never holds a dot)."""
    return ".".join("*" if "{" in token else token for token in template.split("."))


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject matching ``subject`` (itself possibly holding wildcards) matches
    the stream subject ``pattern``."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i  # one token or more, wildcards included
        if i >= len(have):
            return False
        if have[i] == ">":
            return False
        if part != "*" and part != have[i]:
            return False
    return len(have) == len(want)


def overlaps(first: str, second: str) -> bool:
    """Whether some subject matches both filters ``first`` and ``second`` (wildcards on either
    side): ``openmail.*.received`` and ``openmail.>`` do, ``mail.>`` and ``openmail.>`` do not."""
    one = first.split(".")
    other = second.split(".")
    for mine, theirs in zip(one, other, strict=False):
        if ">" in (mine, theirs):
            return True  # the other side's remaining tokens, one or more, are its match
        if "*" not in (mine, theirs) and mine != theirs:
            return False
    return len(one) == len(other)


def is_subject(subject: str) -> bool:
    """Whether ``subject`` is a NATS subject or subject filter (``*`` a token, ``>`` the last)."""
    tokens = subject.split(".")
    for i, part in enumerate(tokens):
        if not _LITERAL_TOKEN.fullmatch(part):
            return False
        if part == ">" and i != len(tokens) - 1:
            return False
        if part not in ("*", ">") and ("*" in part or ">" in part):
            return False
    return True


def covered_by(patterns: Iterable[str], subject: str) -> bool:
    """Whether one of the stream subjects ``patterns`` covers ``subject``."""
    return any(covers(p, subject) for p in patterns)
