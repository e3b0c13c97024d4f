"""The event loop's own error reports, logged through structlog and throttled.

asyncio reports some failures through ``loop.call_exception_handler`` rather than raising them:
an ``accept()`` that fails for want of file descriptors is reported on every attempt, with a
traceback, for as long as the condition lasts. Out of descriptors is exactly what a flood of
connections causes, so each distinct message is logged once and then at most once a minute, with
the count of those left out; the exception's type and text are kept, its traceback is not.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from bridge.throttle import Throttle

log = structlog.get_logger("bridge.loop")


class LoopErrorReporter:
    """A handler for ``loop.set_exception_handler``."""

    def __init__(self) -> None:
        self._throttles: dict[str, Throttle] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the event loop")
        exc = context.get("exception")
        throttle = self._throttles.setdefault(message, Throttle())
        if (extra := throttle.admit_fields("repeated_since_last_line")) is None:
            return
        fields: dict[str, object] = {"message": message}
        if isinstance(exc, BaseException):
            fields["error"] = f"{type(exc).__name__}: {exc}"
        log.error("loop.error", **fields, **extra)
