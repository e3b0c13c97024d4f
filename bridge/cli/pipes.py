"""A reader that stops reading (``| head``, a pager quit early) ends a command quietly.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises BrokenPipeError where
``cat`` or ``grep`` would simply be killed by the signal. ``main`` catches it once, for every
command, and ends the way those tools do: no traceback, exit status 141 (128 + SIGPIPE, what a
shell reports for a tool killed by SIGPIPE, so ``set -o pipefail`` scripts see the same as with
them). It is not 1, which this CLI reserves for runtime failures (a port taken, no bridge).

SIGPIPE is not reset to its default instead: Python's documentation warns against it, since the
signal would then also kill the process when a socket's peer goes away (``status``, ``tail`` and
``trigger`` talk HTTP), and ``listen`` keeps delivering after its stdout is gone.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TextIO

from bridge.cli.exit_codes import EXIT_BROKEN_PIPE


def _reader_gone(stream: TextIO | None) -> bool:
    """Whether ``stream`` is a pipe (or socket) whose reading end is closed.

    A BrokenPipeError may come from a socket rather than the output; only a closed output is
    the reader having had enough. The kernel flags the write end of such a pipe with POLLERR.
    """
    if stream is None:
        return False
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor (an in-memory stream), or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def end_cut_output() -> int | None:
    """After a BrokenPipeError: when stdout or stderr lost its reader, point it at /dev/null
    (the interpreter flushes both on exit, which would fail again and print a complaint) and
    return the exit status; None when neither did (the error is not a cut output)."""
    gone = [stream for stream in (sys.stdout, sys.stderr) if _reader_gone(stream)]
    if not gone:
        return None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in gone:
            os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def flush_stdout() -> None:
    """Write out what is still buffered, so that a reader gone by now raises BrokenPipeError
    here, inside ``main``, rather than at the interpreter's exit. Raises BrokenPipeError."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (AttributeError, ValueError, OSError):
        # No stdout (None), a closed one, or one that fails otherwise: the command's exit
        # status says what it did, and that stands.
        return
