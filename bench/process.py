"""A client under test in its own subprocess: start, peak RSS, bounded stop.

Peak RSS is the kernel's high-water mark of the process's resident set, ``VmHWM`` in
``/proc/<pid>/status``: no sampling, no extra dependency. Writing ``5`` to
``/proc/<pid>/clear_refs`` resets that mark, so one phase of a run is measured apart from the one
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

API_KEY = "om_bench_0000000000000000"


def peak_rss_mb(pid: int) -> float | None:
    """``VmHWM`` of ``pid`` in MB (10^6 bytes), None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


def reset_peak_rss(pid: int) -> bool:
    """Start ``pid``'s ``VmHWM`` afresh from its current RSS; False if the kernel refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class ClientProcess:
    """``argv`` run from the repository root with its output in ``workdir``.

    ``stop_by_signal``: the client does not exit when its connection closes (the bridge reconnects),
    so :meth:`stop` sends SIGTERM at once instead of first waiting for it to leave by itself.
    """

    def __init__(self, name: str, argv: list[str], workdir: Path, *, stop_by_signal: bool) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.stop_by_signal = stop_by_signal
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "OPENMAIL_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
        root = Path(__file__).resolve().parent.parent
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.pid) if self.alive() else None

    def reset_peak_rss(self) -> bool:
        return self.alive() and reset_peak_rss(self.pid)

    async def listening_port(self, log_event: str, within: float) -> int:
        """The port from the first ``{"event": log_event, "listen": "host:port"}`` line on stderr:
        how the bridge (``webhook.listening``, ``admin.listening``) and the hook receiver report
        the port they bound on 127.0.0.1:0.

        Raises:
            TimeoutError: no such line within ``within`` seconds, or the process exited first.
        """
        deadline = time.monotonic() + within
        marker = f'"{log_event}"'
        while time.monotonic() < deadline and self.alive():
            try:
                lines = self.stderr_path.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            for line in lines:
                if marker in line:
                    listen = json.loads(line).get("listen", "")
                    return int(listen.rpartition(":")[2])
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} did not report {log_event}")

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    async def stop(self, *, exit_wait: float = 5.0, term_wait: float = 20.0) -> int | None:
        """Let it exit by itself (``exit_wait``), else SIGTERM (``term_wait``), else SIGKILL."""
        if self.proc is None:
            return None
        if not self.stop_by_signal and await self._exited_within(exit_wait):
            return self.proc.returncode
        for signum, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)
            await self._exited_within(wait)
        return self.proc.returncode

    async def _exited_within(self, seconds: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


def python_module(module: str, *args: str | Path) -> list[str]:
    """``python -m module args...`` with this interpreter (the venv's)."""
    return [sys.executable, "-m", module, *map(str, args)]
