"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, STOPPING); no-op without NOTIFY_SOCKET.

The notify protocol is one datagram per message on a Unix socket, small enough to speak directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping

import structlog

from bridge.throttle import Throttle

log = structlog.get_logger("bridge.systemd")

STATUS_INTERVAL = 1.0
"""Seconds between STATUS= refreshes when no watchdog sets a shorter beat."""


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        own = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and own and int(usec) else None
        self._task: asyncio.Task[None] | None = None
        self._status: str | None = None  # the last STATUS= sent
        self._failed_log = Throttle()  # a watchdog beat fails as often as it beats

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> None:
        """Send ``KEY=value`` lines, e.g. ``notify(READY="1", STATUS="...")``."""
        if self._address is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        self._status = fields.get("STATUS", self._status)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            if (extra := self._failed_log.admit_fields("failed_since_last_line")) is not None:
                log.warning("systemd.notify_failed", error=str(exc), **extra)

    def ready(self, status: str) -> None:
        self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.notify(STATUS=status)

    def stopping(self) -> None:
        self.notify(STOPPING="1", STATUS="stopping")

    def start_watchdog(self, status: Callable[[], str] | None = None) -> None:
        """Ping the watchdog from the event loop: a stuck loop stops the pings and systemd acts.

        With ``status``, also send STATUS= whenever its one-line state changes: READY=1 goes out
        before the WebSocket has subscribed, and the state moves on after it.
        """
        watchdog = self.watchdog_interval
        if self._address is None or (watchdog is None and status is None) or self._task is not None:
            return
        interval = watchdog or STATUS_INTERVAL

        async def beat() -> None:
            while True:
                fields = {"WATCHDOG": "1"} if watchdog is not None else {}
                if status is not None and (line := status()) != self._status:
                    fields["STATUS"] = line
                if fields:
                    self.notify(**fields)
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(beat(), name="systemd:watchdog")

    async def stop_watchdog(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
