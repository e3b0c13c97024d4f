"""Which event loop the daemon runs on: uvloop when installed (the default on Linux), else
asyncio's own. Process-wide, so chosen by the ``run`` command at the edge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

try:  # an optional speed-up; asyncio's own loop does the same job
    import uvloop
except ImportError:  # pragma: no cover - depends on the installation
    uvloop = None  # type: ignore[assignment]

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
"""``auto``: uvloop when it is installed, else asyncio's; ``uvloop`` requires it."""


def uvloop_available() -> bool:
    return uvloop is not None


def loop_name(choice: EventLoopChoice) -> str:
    """The loop ``choice`` runs on in this installation: ``uvloop`` or ``asyncio``."""
    return "uvloop" if choice != "asyncio" and uvloop is not None else "asyncio"


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What :class:`asyncio.Runner` creates the loop with; None: asyncio's default."""
    return uvloop.new_event_loop if loop_name(choice) == "uvloop" else None
