"""``openmail-bridge completion``: the script, loaded into a real bash, completes this version's
commands, a command's own words, and nothing of another command's."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from bridge.cli import build_parser
from bridge.cli.completion import script


def complete(line: list[str]) -> set[str]:
    """What bash offers for the last word of ``line`` with the generated script loaded."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    words = " ".join(f"'{w}'" for w in line)
    program = (
        f"{script(build_parser(), 'bash')}\n"
        f"COMP_WORDS=({words}); COMP_CWORD={len(line) - 1}; _openmail_bridge\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run([bash, "-c", program], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_commands_are_completed_from_the_parser() -> None:
    assert complete(["openmail-bridge", "dl"]) == {"dlq"}
    assert {"run", "check", "status", "listen", "trigger", "completion"} <= complete(
        ["openmail-bridge", ""]
    )


def test_a_commands_own_options_and_choices() -> None:
    assert complete(["openmail-bridge", "dlq", ""]) >= {"list", "retry", "purge", "--sink", "--all"}
    assert complete(["openmail-bridge", "-v", "listen", "--for"]) == {"--forward-to"}
    # A value after an option is not taken for a command.
    assert complete(["openmail-bridge", "status", "-c", "run", "--wa"]) == {"--watch"}
    assert "--forward-to" not in complete(["openmail-bridge", "status", "--"])


def test_the_command_prints_a_script_for_each_shell() -> None:
    for shell in ("bash", "zsh"):
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "completion", shell],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "complete -o default -F _openmail_bridge openmail-bridge" in done.stdout
    assert done.stdout.startswith("autoload -U +X bashcompinit && bashcompinit")
