"""Publishes the NATS server refused for want of permission. The server answers such a publish
with ``-ERR 'Permissions Violation for Publish to "<subject>"'`` and keeps the connection open;
nats-py hands that to the error callback only, and the request itself is never answered. This
module reads the subject out of that report and ends at once whatever waits on an answer from it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Final, TypeVar

import nats.errors

T = TypeVar("T")

_DENIED: Final = re.compile(r'permissions violation for publish to "(?P<subject>[^"]+)"', re.I)
"""nats-py lowercases the server's report, subject included: subjects are matched ignoring case."""


class PublishDenied(nats.errors.Error):
    """The server refused this connection permission to publish to a subject; its report."""


def denied_subject(report: str) -> str | None:
    """The subject a server's error report says a publish to was denied, lowercased; else None
    (a denied subscription or reply subject, or another error)."""
    found = _DENIED.search(report)
    return found["subject"].lower() if found else None


class Denials:
    """Who waits on an answer from a subject, woken when a publish to it is denied."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[str]]] = {}

    def report(self, report: str) -> bool:
        """Take a server's error report; whether it denied a publish to a subject."""
        subject = denied_subject(report)
        if subject is None:
            return False
        for waiter in self._waiting.get(subject, ()):
            if not waiter.done():
                waiter.set_result(report)
        return True

    async def guard(self, subject: str, call: Awaitable[T]) -> T:
        """``call``'s outcome, unless the server denies a publish to ``subject`` first: a request
        the server dropped would otherwise be waited on until its timeout.

        Raises:
            PublishDenied: with the server's report. The server names only the subject, so a
                denial of another publish to the same subject ends this one too: it would be
                denied as well.
        """
        key = subject.lower()
        denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(denied)
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait((task, denied), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise PublishDenied(denied.result())
        finally:
            waiting = self._waiting[key]
            waiting.discard(denied)
            if not waiting:
                del self._waiting[key]
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
