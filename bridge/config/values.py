"""Configuration value types: durations, sizes, secrets, listen addresses, URLs, file paths,
email addresses.

Each is a plain Python value carrying an ``Annotated`` marker, so a section dataclass says what it
wants in its type hints and the walker (``bridge.config.walker``) knows how to read it.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

from bridge.addresses import addresses, canonical

# --- Value types -------------------------------------------------------------------------------


class Kind(enum.Enum):
    """What an ``Annotated`` marker asks the loader to read."""

    DURATION = "a duration such as 500ms, 20s, 5m, 24h or 7d"
    SIZE = "a size such as 64KiB or 10MiB"
    HTTP_URL = "an http(s) URL"
    WS_URL = "a ws(s) URL"
    PATH = "a file path"
    RATE = "a rate such as 20/10m (at most 20 per 10 minutes)"
    ADDRESS = "an email address such as agent@example.com"


Duration = Annotated[float, Kind.DURATION]
"""Seconds, written with a unit."""
ByteSize = Annotated[int, Kind.SIZE]
HttpUrl = Annotated[str, Kind.HTTP_URL]
WsUrl = Annotated[str, Kind.WS_URL]
FilePath = Annotated[Path, Kind.PATH]
EmailAddress = Annotated[str, Kind.ADDRESS]
"""One mailbox, written alone (``agent@example.com``): a string, never a number."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` events in any ``window`` seconds (a sliding window)."""

    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}s"


Rate = Annotated[RateLimit, Kind.RATE]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The range of a whole-number key, as an ``Annotated`` marker: a value that is not a number
    and one out of range get the same message, so one rule reads the same however it is broken.
    A plain ``int`` key is ``Bounds()``: 0 or more."""

    low: int = 0
    high: int | None = None
    why: str = ""
    """Appended in parentheses: why the range is what it is."""

    def problem(self, got: str) -> str:
        if self.high is not None:
            rule = f"must be a whole number between {self.low} and {self.high}"
        elif self.low == 0:
            rule = "must be a whole number, 0 or more"
        else:
            rule = f"must be a whole number, at least {self.low}"
        why = f" ({self.why})" if self.why else ""
        return f"{rule}{why}, got {got}"

    def admits(self, value: int) -> bool:
        return self.low <= value and (self.high is None or value <= self.high)


Positive = Annotated[int, Bounds(1)]
"""A whole number, at least 1 (a count of workers, connections, messages)."""


class Secret:
    """A secret value; its ``repr`` and ``str`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Listen:
    """A ``host:port`` to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|k|K|M|G)?\s*$")
_SIZE_UNITS: Final = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "k": 1 << 10,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
}


def is_ascii_digits(text: str) -> bool:
    # str.isdigit() also accepts characters such as '²' that int() rejects.
    return text.isascii() and text.isdigit()


def parse_duration(text: str) -> float:
    """``"500ms"`` -> 0.5. Raises ValueError."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not {Kind.DURATION.value}: {text!r}")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):  # hundreds of digits overflow to inf
        raise ValueError(f"{text!r} is too large")
    return seconds


def parse_size(text: str) -> int:
    """``"10MiB"`` -> 10485760. Raises ValueError."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not {Kind.SIZE.value}: {text!r}")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not math.isfinite(size):  # int(inf) would raise OverflowError
        raise ValueError(f"{text!r} is too large")
    return int(size)


def parse_rate(text: str) -> RateLimit:
    """``"20/10m"`` -> at most 20 per 600 seconds. Raises ValueError."""
    count, sep, window = text.partition("/")
    if not sep or not is_ascii_digits(count.strip()):
        raise ValueError(f"not {Kind.RATE.value}: {text!r}")
    seconds = parse_duration(window)
    if int(count) < 1 or seconds <= 0:
        raise ValueError(f"{text!r} must allow at least 1 event in a window longer than 0s")
    return RateLimit(int(count), seconds)


def parse_address(text: str) -> str:
    """``" agent@example.com "`` -> ``"agent@example.com"``: one address, as the guard reads a
    sender's (:func:`bridge.addresses.addresses`), written alone. Raises ValueError."""
    found = addresses(text)
    if not found:
        raise ValueError(f"not an email address: {text!r}")
    if len(found) > 1:
        raise ValueError(f"{text!r} names {len(found)} addresses: give each as an entry of its own")
    # A display name or a comment around it would be compared as part of the address.
    if canonical(text) != found[0]:
        raise ValueError(f"{text!r} is more than an address: write {found[0]} alone")
    return text.strip()


def parse_listen(text: str) -> Listen:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``":8080"`` (all interfaces). Raises ValueError."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not is_ascii_digits(port_text):
        raise ValueError(f"not a host:port address: {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Listen(host or "0.0.0.0", port)
