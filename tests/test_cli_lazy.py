"""Each command's code is imported only when that command runs: the commands run often, by agents
and operators (``status``, ``trigger``, ``--version``), start without the bridge's server, sinks,
simulator and demo. Checked in a fresh interpreter, by the modules it loaded."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from test_cli import cli_env

from bridge.cli import build_parser
from bridge.cli.commands import Lazy

# Imported by `run` (and `listen`, `demo`, `simulator`) alone.
SERVER_MODULES = ("bridge.supervisor", "bridge.sinks", "bridge.simulator", "bridge.demo", "aiohttp")

PROBE = """
import json, sys
from bridge.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --version, --help
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(tmp_path: Path, *args: str) -> tuple[object, set[str]]:
    """The exit code of ``openmail-bridge ARGS`` and the modules its interpreter loaded."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        env=cli_env(HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    return report["code"], set(report["modules"])


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("status", "--admin", "http://127.0.0.1:{port}"),
        ("trigger", "--sink", "agent", "--admin", "http://127.0.0.1:{port}"),
    ],
    ids=["version", "status", "trigger"],
)
def test_an_operator_command_loads_none_of_the_server(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    port = free_port()  # nothing listens there: the command finds no bridge
    code, modules = loaded(tmp_path, *(a.format(port=port) for a in args))
    assert code == (0 if args == ("--version",) else 1)
    assert not [m for m in SERVER_MODULES if m in modules]


def test_run_loads_its_code_when_it_runs(tmp_path: Path) -> None:
    # Without a config `run` stops at reading it (exit 2), having loaded what reads a config.
    code, modules = loaded(tmp_path, "run")
    assert code == 2
    assert {"bridge.cli.run", "bridge.supervisor", "bridge.sinks"} <= modules
    assert "bridge.simulator" not in modules


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, object]]:
    """Every (sub)command of ``parser`` and the function its arguments name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub.get_default("func")
                yield from commands(sub)


def test_every_command_names_a_function_that_exists() -> None:
    named = dict(commands(build_parser()))
    assert {"run", "check", "status", "dlq", "events", "tail", "trigger", "listen"} <= set(named)
    lazy = [func for func in named.values() if isinstance(func, Lazy)]
    assert len(lazy) >= 12
    for func in lazy:
        assert callable(getattr(importlib.import_module(func.module), func.function)), func
