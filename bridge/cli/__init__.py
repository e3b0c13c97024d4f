"""Command line: ``run``, ``check``, ``simulator``, ``demo``, ``dlq``, ``route-test``, ``status``,
``nats-status``, ``listen``, ``trigger``, ``events``, ``tail``, ``completion``.

One module per command, imported only when that command runs; ``commands`` holds the parser,
this one ``main``. The CLI is the only place that touches signals or turns exceptions into exit
codes (``exit_codes``): 0 success, 1 a runtime failure (state in use, a port taken), 2 a
configuration or usage error, 141 when the output's reader went away (``| head``; ``pipes``).

``run``, ``check`` and ``nats-status`` read the whole config (``daemon_config``) and refuse an
invalid one; the operator commands (``status``, ``dlq``, ``route-test``) read only the keys they
use (``operator_config``), so they work without the daemon's secrets and beside a broken file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bridge import logs
from bridge.cli.commands import build_parser
from bridge.cli.config_file import print_config_error
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE
from bridge.cli.pipes import end_cut_output, flush_stdout
from bridge.cli.verbosity import log_level
from bridge.errors import BridgeError, ConfigError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Also after argparse's --help or a usage error (SystemExit): a reader gone by now
            # is caught below, not complained of by the interpreter's own flush at exit.
            flush_stdout()
    except BrokenPipeError:
        # Output cut short by its reader (`| head`): end quietly, as cat or grep would.
        code = end_cut_output()
        if code is None:  # not the output's pipe: a real failure, shown as one
            raise
        return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Logs go to stderr, never stdout (that belongs to --json output and the stdout sink); the
    # commands that run a bridge reconfigure this from their config.
    logs.configure(log_level(args) or "warning", "auto")
    try:
        try:
            code: int = args.func(args)
        except ConfigError as exc:  # every command reads its config before doing anything else
            print_config_error(exc, getattr(args, "config", None))
            return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BridgeError as exc:
        print(f"openmail-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code
