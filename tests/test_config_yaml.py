"""The config file as YAML: a key given twice in one mapping is a problem naming both lines (the
second would silently replace the first), merge keys still work, and a syntax error gets the
``${...}`` hint only where an unquoted ``${`` is what broke it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.config import ADMIN, ROUTES, STATE, read_operator_config
from bridge.sinks.http import HttpSinkOptions
from tests.test_cli import _dead_letters, bridge
from tests.test_config import load, problems

# Line numbers below count from 1 in this text.
TWO_AGENTS = """\
openmail:
  api_key: k
  webhook:
    listen: 127.0.0.1:0
    secret: first-secret
    secret: second-secret
log:
  level: info
  level: debug
sinks:
  console: {type: stdout}
  agent:
    type: http
    url: http://127.0.0.1:3000/h
  audit:
    type: file
    path: ./events.jsonl
  agent:
    type: file
    path: ./agent.jsonl
"""


def test_a_key_given_twice_is_a_problem_naming_both_lines(tmp_path: Path) -> None:
    found = problems(tmp_path, TWO_AGENTS)
    assert found == [
        "openmail.webhook.secret: given twice (lines 5 and 6); the second would replace the first",
        "log.level: given twice (lines 8 and 9); the second would replace the first",
        "sinks.agent: given twice (lines 12 and 18); the second would replace the first",
    ]
    assert not any("first-secret" in p or "second-secret" in p for p in found)


def test_a_repeat_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    text = TWO_AGENTS.replace("level: debug", "level: loud")
    found = problems(tmp_path, text + "routes:\n  - name: r\n    sinks: [agent, nope]\n")
    assert "log.level: given twice (lines 8 and 9); the second would replace the first" in found
    assert any(p.startswith("log.level: 'loud' is not one of") for p in found), found
    assert any(p.startswith("routes[0] (r).sinks[1]: no sink named 'nope'") for p in found)
    assert len(found) == 5, found


def test_check_refuses_a_file_with_a_key_given_twice(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(TWO_AGENTS)
    result = bridge(tmp_path, "check", "-c", str(tmp_path / "config.yaml"))
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert "  sinks.agent: given twice (lines 12 and 18)" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Three times: one problem with every line.
        (
            "log:\n  level: info\n  level: debug\n  level: warning\n",
            "log.level: given 3 times (lines 2, 3 and 4); the last would replace the others",
        ),
        # In a flow mapping, and spelled once quoted: the same key.
        (
            "sinks:\n  a: {type: stdout, 'type': file}\n",
            "sinks.a.type: given twice (line 2, columns 7 and 21); the second would replace the "
            "first",
        ),
        (
            "sinks:\n  a: {type: stdout, type: file,\n    type: http}\n",
            "sinks.a.type: given 3 times (line 2 column 7, line 2 column 21 and line 3 column 5); "
            "the last would replace the others",
        ),
        # Inside a list item, named by its index.
        (
            "routes:\n  - name: r\n    sinks: [a]\n    name: s\n",
            "routes[0].name: given twice (lines 2 and 4); the second would replace the first",
        ),
        # A whole section.
        (
            "log: {level: info}\nstate: {}\nlog: {format: json}\n",
            "log: given twice (lines 1 and 3); the second would replace the first",
        ),
        # 1 and "1" are two keys to YAML, but both name the sink "1".
        (
            "sinks:\n  1: {type: stdout}\n  '1': {type: stdout}\n",
            "sinks.1: given twice (lines 2 and 3); the second would replace the first",
        ),
    ],
)
def test_every_mapping_is_checked(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_merge_keys_still_work_and_an_override_is_no_repeat(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        openmail: {api_key: k, webhook: {listen: "127.0.0.1:0", secret: s}}
        sinks:
          agent: &agent
            type: http
            url: http://127.0.0.1:3000/a
            timeout: 5s
          other:
            <<: *agent
            url: http://127.0.0.1:3000/b
    """)
    config = load(tmp_path, text)
    other = config.sinks["other"].options
    assert isinstance(other, HttpSinkOptions)
    assert other.url == "http://127.0.0.1:3000/b"
    assert other.timeout == 5.0


def test_the_lenient_read_counts_a_repeat_only_against_the_part_it_is_in(tmp_path: Path) -> None:
    base = "sinks:\n  a: {type: stdout}\nroutes:\n  - {name: r, sinks: [a]}\n"
    elsewhere = read_operator_config(text=base + "log: {level: info, level: debug}\n", env={})
    assert elsewhere.problems == {}
    for text, part, key in [
        (base + "state: {path: a.db, path: b.db}\n", STATE, "state.path"),
        (base + "admin: {listen: '127.0.0.1:1', listen: '127.0.0.1:2'}\n", ADMIN, "admin.listen"),
        (base.replace("  a:", "  a: {type: http}\n  a:"), ROUTES, "sinks.a"),
        (base.replace("{type: stdout}", "{type: stdout, type: http}"), ROUTES, "sinks.a.type"),
        (base + "routes: []\n", ROUTES, "routes"),
    ]:
        config = read_operator_config(text=text, env={})
        assert list(config.problems) == [part], (text, config.problems)
        (problem,) = config.problems[part]
        assert problem.startswith(f"{key}: given twice"), problem


def test_an_operator_command_reads_past_a_repeat_elsewhere(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    _dead_letters(db, "evt_a")
    config = tmp_path / "config.yaml"
    state = f"state:\n  path: {db}\n"
    config.write_text(TWO_AGENTS + state)
    result = bridge(tmp_path, "dlq", "list", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[:2] == ["agent", "evt_a"]

    config.write_text(TWO_AGENTS + state + f"  path: {tmp_path / 'other.db'}\n")
    result = bridge(tmp_path, "dlq", "list", "-c", str(config))
    assert result.returncode == 2
    assert "state.path: given twice (lines 22 and 23)" in result.stderr


# --- the hint on a YAML syntax error -----------------------------------------------------------

MAP_HINT = "(a ${...} value inside a {...} flow mapping must be quoted)"
LIST_HINT = "(a ${...} value inside a [...] flow sequence must be quoted)"
VALID_WITH_VARIABLE = """\
openmail:
  api_key: ${OM_KEY}
  webhook: {listen: "127.0.0.1:0", secret: s}
sinks:
  console: {type: stdout}
"""


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        # The error is elsewhere than any ${: no hint.
        (VALID_WITH_VARIABLE + "routes: [\n", None),
        (VALID_WITH_VARIABLE + "log: {level: info}}\n", None),
        ('sinks: {a: {type: http, url: "${URL}", x: [}}\n', None),
        # An unquoted ${ in a flow mapping, on the first line of it or a later one.
        ("sinks: {a: {type: http, url: ${URL}}\n", MAP_HINT),
        ("sinks:\n  a: {type: http,\n      url: http://${HOST}/h}\n", MAP_HINT),
        # In a flow sequence.
        ("openmail: {websocket: {inbox_ids: [${INBOX}]}}\n", LIST_HINT),
    ],
)
def test_the_flow_hint_only_where_an_unquoted_dollar_brace_broke_it(
    tmp_path: Path, text: str, hint: str | None
) -> None:
    (found,) = problems(tmp_path, text)
    assert found.startswith("<yaml>: not valid YAML at line"), found
    if hint is None:
        assert "${...}" not in found, found
    else:
        assert found.endswith(hint), found
