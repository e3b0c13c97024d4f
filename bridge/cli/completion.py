"""``completion bash|zsh``: a shell completion script, generated from the parser itself, so it
always offers the commands and options this version has."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

from bridge.cli.exit_codes import EXIT_OK

PROG = "openmail-bridge"
_FUNCTION = "_openmail_bridge"
SHELLS = ("bash", "zsh")


def add_completion_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], root: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description=f"Add `source <({PROG} completion bash)` to ~/.bashrc, or the zsh one to "
        "~/.zshrc.",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=lambda args: _print(args, root))


def _print(args: argparse.Namespace, root: argparse.ArgumentParser) -> int:
    print(script(root, args.shell))
    return EXIT_OK


def words(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(command path, words offered there) for ``parser`` and every subcommand below it."""
    offered: list[str] = []
    children: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                offered.append(name)
                children.append((name, child))
        elif not action.option_strings and action.choices is not None:
            offered.extend(str(choice) for choice in action.choices)  # dlq list|retry|purge
        elif not isinstance(action, argparse._HelpAction):
            offered.extend(action.option_strings)
    offered.append("--help")
    yield " ".join(path), " ".join(offered)
    for name, child in children:
        yield from words(child, (*path, name))


def script(root: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell``: bash, or zsh through its bash compatibility."""
    cases = "\n".join(
        f"        {shlex.quote(path)}) offered={shlex.quote(offered)} ;;"
        for path, offered in words(root)
    )
    body = f"""{_FUNCTION}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word offered=""
    # The command path so far: the words before the cursor that are not options or values.
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) [[ " $(_openmail_bridge_words "$path") " == *" $word "* ]] \\
            && path="${{path:+$path }}$word" ;; esac
    done
    offered="$(_openmail_bridge_words "$path")"
    COMPREPLY=($(compgen -W "$offered" -- "$cur"))
}}
_openmail_bridge_words() {{
    local offered
    case "$1" in
{cases}
        *) offered="" ;;
    esac
    printf '%s' "$offered"
}}
complete -o default -F {_FUNCTION} {PROG}"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body
