"""Process-level guards: loop errors are throttled, malloc gives freed memory back."""

from __future__ import annotations

import asyncio

import structlog
from conftest import events_named

from bridge.loop_errors import LoopErrorReporter
from bridge.memory import tune_malloc


def test_a_repeated_loop_error_is_logged_once_without_a_traceback() -> None:
    loop = asyncio.new_event_loop()
    try:
        reporter = LoopErrorReporter()
        with structlog.testing.capture_logs() as logs:
            for _ in range(1000):
                reporter(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    },
                )
            reporter(loop, {"message": "Task exception was never retrieved"})
    finally:
        loop.close()
    lines = events_named(logs, "loop.error")
    assert [line["message"] for line in lines] == [
        "socket.accept() out of system resource",
        "Task exception was never retrieved",
    ]
    assert lines[0]["error"] == "OSError: [Errno 24] Too many open files"
    assert "exc_info" not in lines[0]


def test_malloc_tuning_takes_on_glibc() -> None:
    # This machine's Python runs on glibc; elsewhere the call is a documented no-op.
    assert tune_malloc() is True
