"""``run``: the bridge in the foreground, and the signals that steer it.

SIGTERM/SIGINT drain and stop (a second one forces the stop, the store still closed cleanly);
SIGHUP reloads the configuration and reopens file sinks. The supervisor never touches signals.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

import structlog

from bridge import logs
from bridge.cli.daemon_config import daemon_config
from bridge.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from bridge.config import Config
from bridge.errors import StoreError
from bridge.loop_errors import LoopErrorReporter
from bridge.memory import tune_malloc
from bridge.runtime import loop_factory
from bridge.supervisor import Supervisor
from bridge.systemd import Notifier

log = structlog.get_logger("bridge.cli")


async def _run(config: Config, build: Callable[[Config], Supervisor]) -> int:
    supervisor = build(config)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(LoopErrorReporter())
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_stop(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("bridge.signal", signal=signal.Signals(signum).name, action="drain and stop")
            supervisor.request_stop()
        elif main_task is not None:
            log.warning("bridge.signal", signal=signal.Signals(signum).name, action="force stop")
            main_task.cancel()

    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        # The loop holds tasks only weakly: keep a reference until the reload is done.
        task = asyncio.ensure_future(supervisor.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await supervisor.start()
    except (StoreError, OSError) as exc:
        log.error("bridge.start_failed", error=str(exc))
        print(f"openmail-bridge: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        await supervisor.wait_stop_requested()
    except asyncio.CancelledError:
        pass
    finally:
        # A second signal cancels the drain, but the store is still closed cleanly.
        stopper = asyncio.ensure_future(supervisor.stop())
        while not stopper.done():
            try:
                await asyncio.shield(stopper)
            except asyncio.CancelledError:
                supervisor.abort()
    return EXIT_OK


def run_foreground(config: Config, build: Callable[[Config], Supervisor]) -> int:
    """Run the bridge ``build`` makes of ``config`` until SIGTERM/SIGINT; its exit code."""
    logs.configure(config.log.level, config.log.format)
    # A file-size limit should fail a write (EFBIG, handled as a store error), not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    tune_malloc()
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        return runner.run(_run(config, build))


def cmd_run(args: argparse.Namespace) -> int:
    config = daemon_config(args)
    return run_foreground(config, lambda c: Supervisor(c, notifier=Notifier()))
