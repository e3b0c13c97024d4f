"""Machine noise: how much CPU other processes took while a row was being measured.

Ratios within one run cancel out the machine's speed, not a neighbour that starts compiling halfway
through. The meter reads the kernel's counters (``/proc/stat`` and ``/proc/<pid>/stat``) at both
ends of a row and reports the CPUs busy outside the harness and the client under test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
NOISY_CPUS = 0.25
"""Other processes using more CPUs than this make a row's numbers noisy (noted under the table)."""


def system_busy_seconds() -> float:
    """CPU seconds spent not idle, over all CPUs, since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def process_seconds(pid: int) -> float:
    """CPU seconds used by ``pid``, all threads (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """Started with the pids that belong to the measurement; :meth:`other_cpus` at the end."""

    def __init__(self, *pids: int) -> None:
        self.pids = (os.getpid(), *pids)
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        own = sum(process_seconds(pid) for pid in self.pids)
        return time.monotonic(), system_busy_seconds(), own

    def other_cpus(self) -> float | None:
        """Average CPUs used by everything else since the start; None if unmeasurable."""
        try:
            end = self._sample()
        except (OSError, ValueError):
            return None
        wall, busy, own = (e - s for e, s in zip(end, self._start, strict=True))
        if wall <= 0:
            return None
        return max(0.0, (busy - own) / wall)
