"""Structured logging: structlog configured once, JSON lines on stderr (console on a TTY), redacted.

Named ``logs`` so it does not shadow the standard library's ``logging``. Redaction is a processor in
the chain, so no call site can forget it: keys that name secrets are masked, and API keys, bearer
tokens, ``token=`` query values and every secret the config holds are masked inside any string.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterable
from typing import Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

MASK: Final = "***"
_SECRET_KEYS: Final = re.compile(
    r"(api_?key|secret|token|signature|password|authorization|passwd)", re.IGNORECASE
)
_ANY_MARKER: Final = re.compile(r"(?i)token=|bearer|om_live_|om_test_|whsec_")
_SECRET_PATTERNS: Final = (
    re.compile(r"(?i)(token=)[^&\s'\"]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"()\bom_(?:live|test)_[A-Za-z0-9_]+"),
    re.compile(r"()\bwhsec_[A-Za-z0-9+/=]+"),
)


class Redactor:
    """Masks secrets in every value of an event dict, recursively."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Register the literal secret values of the running config (longest first)."""
        self._known = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, MASK)
        # One cheap scan first: most log values hold none of the markers.
        if _ANY_MARKER.search(text):
            for pattern in _SECRET_PATTERNS:
                text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text

    def _value(self, key: str, value: object) -> object:
        if key and _names_secret(key) and value not in (None, "", 0, False):
            return MASK
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value("", v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            if key in ("exc_info", "exception"):
                continue
            event_dict[key] = self._value("" if key == "event" else key, value)
        if "exception" in event_dict and isinstance(event_dict["exception"], str):
            event_dict["exception"] = self.scrub(event_dict["exception"])
        return event_dict


@functools.lru_cache(maxsize=1024)
def _names_secret(key: str) -> bool:
    # Log keys are a small fixed vocabulary, so the regex runs once per key, not once per line.
    return _SECRET_KEYS.search(key) is not None


REDACTOR: Final = Redactor()


def _scrub_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Tracebacks are rendered to text by format_exc_info; scrub the text as well.
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = REDACTOR.scrub(exc)
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging (for aiohttp) once per process."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    numeric = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        REDACTOR,
    ]
    renderer: Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        shared += [structlog.processors.format_exc_info, _scrub_rendered]
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # aiohttp and asyncio log through the standard library; route them to the same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
