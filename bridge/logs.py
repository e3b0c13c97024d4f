"""Structured logging: structlog configured once, JSON lines on stderr (console on a TTY), redacted.

Named ``logs`` so it does not shadow the standard library's ``logging``. Redaction is a processor in
the chain, so no call site can forget it: values under keys that name secrets are masked, and
every secret the config holds, URL credentials, secret-looking query values, bearer tokens and
API keys are masked inside any string (what "looks secret" is defined once, in ``bridge.redact``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bridge import redact
from bridge.printable import printable

MASK: Final = redact.MASK


class Redactor:
    """Masks secrets in every value of an event dict, recursively (see ``bridge.redact``)."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Register the literal secret values of the running config."""
        self._known = redact.literal_secrets(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The registered literal secrets, longest first."""
        return self._known

    def scrub(self, text: str) -> str:
        return redact.scrub_text(text, self._known)

    def scrub_tree(self, value: object) -> object:
        """``value`` with every string in it (map values, list items) scrubbed. Keys are left
        alone and never mask what is under them: in a report such as ``/status`` they are
        names (a sink may be called ``api-keys``), not log vocabulary."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub_tree(v) for v in value]
        return value

    def _value(self, key: str, value: object) -> object:
        if key and redact.names_secret(key) and value not in (None, "", 0, False):
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
            if key in ("exc_info", "exception", "_record", "_from_structlog"):
                continue
            event_dict[key] = self._value("" if key == "event" else key, value)
        if "exception" in event_dict and isinstance(event_dict["exception"], str):
            event_dict["exception"] = self.scrub(event_dict["exception"])
        return event_dict


REDACTOR: Final = Redactor()


def _scrub_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # Tracebacks are rendered to text by format_exc_info (in both formats); scrub the text too:
    # an exception's message often quotes the URL or header it failed on.
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = REDACTOR.scrub(exc)
    return event_dict


def _printable_values(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A console line shows values as they are: one with an escape sequence or a bidi override
    (an id or error text a stranger wrote) would drive the operator's terminal. JSON lines
    escape control characters already."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable():
            event_dict[key] = printable(value, keep_newlines=True)
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging once per process.

    aiohttp's and asyncio's records go through the same processors as the bridge's own (the
    redactor included) and come out in the same format. Tracebacks are rendered to text and
    scrubbed in both formats, and never show local variables (a frame's locals hold secrets).
    """
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    numeric = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        REDACTOR,
        structlog.processors.format_exc_info,
        _scrub_rendered,
    ]
    renderer: Processor
    if use_console:
        shared.append(_printable_values)
        # plain_traceback, named rather than left to the default: with rich installed the
        # default would be rich's, which can show locals.
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
