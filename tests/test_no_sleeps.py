"""No test synchronises by sleeping: a ``time.sleep`` or ``asyncio.sleep`` of a literal longer than
a blink (``MAX_SLEEP``) is a guess at how long something takes. Wait on an event or a condition,
or inject a clock or a sleep, instead. ``tests/system/`` drives real subprocesses and is exempt."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
EXEMPT = TESTS / "system"
MAX_SLEEP = 0.05
SLEEPS = {("time", "sleep"), ("asyncio", "sleep")}


def _delay(call: ast.Call) -> float | None:
    """The literal a sleep call waits for (positional, or asyncio's ``delay=``), else None."""
    args = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "delay")]
    for arg in args:
        if isinstance(arg, ast.Constant) and type(arg.value) in (int, float):
            return float(arg.value)
    return None


def long_sleeps(source: str) -> list[tuple[int, float]]:
    """(line, seconds) of each ``time.sleep`` / ``asyncio.sleep`` of a literal over MAX_SLEEP."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not isinstance(owner, ast.Name) or (owner.id, node.func.attr) not in SLEEPS:
            continue
        seconds = _delay(node)
        if seconds is not None and seconds > MAX_SLEEP:
            found.append((node.lineno, seconds))
    return found


def test_the_check_finds_what_it_is_meant_to() -> None:
    source = (
        "import asyncio, time\n"
        "time.sleep(0.1)\n"
        "await asyncio.sleep(delay=2)\n"
        "await asyncio.sleep(0.05)\n"
        "await asyncio.sleep(0)\n"
        "await asyncio.sleep(interval)\n"
        "other.sleep(5)\n"
    )
    assert long_sleeps(source) == [(2, 0.1), (3, 2.0)]


def test_no_test_sleeps_to_synchronise() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{line}: sleep({seconds})"
        for path in sorted(TESTS.rglob("*.py"))
        if EXEMPT not in path.parents
        for line, seconds in long_sleeps(path.read_text())
    ]
    assert offenders == [], "\n".join(offenders)
