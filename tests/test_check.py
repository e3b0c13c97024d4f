"""``check`` reports every problem of a file at once, words one rule the same however it is broken,
gives hints only where they apply, and refuses configs that could never deliver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from unprivileged import EXECUTABLE, HAS_SETPRIV, as_uid

from bridge.config import load_config, read_operator_config
from bridge.config.directories import Verdict, check_directory, fixed_directory, mount_type
from bridge.errors import ConfigError
from bridge.sinks import SINK_TYPES
from bridge.sinks.file import FileSinkOptions
from tests.test_cli import cli_env
from tests.test_config import BASE, DROP, load, merged, problems


def _problems(tmp_path: Path, override: dict[str, Any]) -> list[str]:
    return problems(tmp_path, merged(BASE, override))


# --- every problem at once ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (
            {"timout": "5s", "retry": {"max_attemps": 3}},
            ["sinks.agent.timout: unknown key", "sinks.agent.retry.max_attemps: unknown key"],
        ),
        (
            {"timeout": "10 seconds", "retry": {"max_attempts": -3}},
            ["sinks.agent.timeout: not a duration", "sinks.agent.retry.max_attempts: must be"],
        ),
        (
            {"timout": "5s", "concurrency": 0},
            ["sinks.agent.timout: unknown key", "sinks.agent.concurrency: must be"],
        ),
    ],
)
def test_a_sink_option_problem_hides_no_common_one(
    tmp_path: Path, agent: dict[str, Any], expected: list[str]
) -> None:
    found = _problems(tmp_path, {"sinks": {"agent": agent}})
    assert len(found) == 2, found
    for fragment in expected:
        assert any(p.startswith(fragment) for p in found), (fragment, found)


def test_a_bad_match_key_hides_no_unknown_sink(tmp_path: Path) -> None:
    route = {"name": "r", "match": {"inbox": ["inb_1"]}, "sinks": ["agent", "nope"]}
    found = _problems(tmp_path, {"routes": [route]})
    assert len(found) == 2, found
    assert any(p.startswith("routes[0] (r).match.inbox: unknown key") for p in found)
    assert any(p.startswith("routes[0] (r).sinks[1]: no sink named 'nope'") for p in found)


# --- one rule, one wording ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "section", "rule"),
    [
        ("concurrency", ("sinks", "console"), "must be a whole number, at least 1"),
        ("max_connections", ("openmail", "webhook"), "must be a whole number, at least 1"),
        ("max_in_flight", ("openmail", "websocket"), "must be a whole number between 1 and 100"),
    ],
)
def test_one_rule_reads_the_same_however_it_is_broken(
    tmp_path: Path, key: str, section: tuple[str, str], rule: str
) -> None:
    messages = []
    for value in ("four", 0, -3):
        found = _problems(tmp_path, {section[0]: {section[1]: {key: value}}})
        assert len(found) == 1, found
        assert found[0].startswith(f"{'.'.join(section)}.{key}: {rule}"), found[0]
        messages.append(found[0].rpartition(", got ")[0])
    assert len(set(messages)) == 1, messages


# --- hints only where they apply ---------------------------------------------------------------

FLOW_HINT = "a ${...} value inside a {...} flow mapping must be quoted"


def test_the_flow_map_hint_only_for_a_file_with_dollar_braces(tmp_path: Path) -> None:
    (without,) = problems(tmp_path, "sinks: {a: {type: stdout}\nstate: x\n")
    assert without.startswith("<yaml>: not valid YAML")
    assert FLOW_HINT not in without
    (with_var,) = problems(tmp_path, "sinks: {a: {type: http, url: ${URL}}\n")
    assert FLOW_HINT in with_var


@pytest.mark.parametrize(
    ("override", "key", "inbound"),
    [
        ({"sinks": {"agent": {"secret": ""}}}, "sinks.agent.secret", False),
        ({"openmail": {"api_key": " "}}, "openmail.api_key", False),
        ({"openmail": {"webhook": {"secret": ""}}}, "openmail.webhook.secret", True),
        ({"admin": {"token": ""}}, "admin.token", True),
    ],
)
def test_an_empty_secret_is_explained_by_which_way_it_works(
    tmp_path: Path, override: dict[str, Any], key: str, inbound: bool
) -> None:
    (found,) = _problems(tmp_path, override)
    assert found.startswith(f"{key}: is empty")
    assert ("would accept anything" in found) is inbound
    assert ("cannot sign or authenticate what the bridge sends" in found) is not inbound


def test_an_empty_sink_secret_file_speaks_of_outbound_signing(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n")
    agent = {"secret": DROP, "secret_file": str(tmp_path / "empty.txt")}
    (found,) = _problems(tmp_path, {"sinks": {"agent": agent}})
    assert found.startswith("sinks.agent.secret_file: ")
    assert "cannot sign or authenticate" in found
    assert "accept anything" not in found


# --- configs that could never deliver ----------------------------------------------------------


def test_credentials_in_the_url_and_an_authorization_header_conflict(tmp_path: Path) -> None:
    agent = {"url": "https://u:p@agent.example/h", "headers": {"Authorization": "Bearer x"}}
    (found,) = _problems(tmp_path, {"sinks": {"agent": agent}})
    assert found.startswith("sinks.agent.headers.Authorization: conflicts with the credentials")
    assert "Bearer x" not in found
    assert ":p@" not in found
    # Either alone is fine.
    load(tmp_path, merged(BASE, {"sinks": {"agent": {"url": "https://u:p@agent.example/h"}}}))
    load(tmp_path, merged(BASE, {"sinks": {"agent": {"headers": {"authorization": "x"}}}}))


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/proc/nope/events.jsonl", "proc filesystem"),
        ("/proc/nope/{inbox_id}/events.jsonl", "proc filesystem"),
        ("/sys/nope/events.jsonl", "sysfs filesystem"),
        ("{file}/sub/events.jsonl", "is a file"),
    ],
)
def test_a_file_sink_directory_that_can_never_exist_is_an_error(
    tmp_path: Path, path: str, fragment: str
) -> None:
    (tmp_path / "file").write_text("")
    given = path.replace("{file}", str(tmp_path / "file"))
    (found,) = _problems(tmp_path, {"sinks": {"audit": {"path": given}}})
    assert found.startswith("sinks.audit.path: ")
    assert fragment in found


def test_a_missing_file_sink_directory_is_a_warning(tmp_path: Path) -> None:
    data = merged(BASE, {"sinks": {"audit": {"path": "later/{inbox_id}/events.jsonl"}}})
    data["state"] = {"path": str(tmp_path / "state" / "bridge.db")}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check", "-c", str(config)],
        cwd=tmp_path, env=cli_env(HOME=str(tmp_path)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"warning: sinks.audit.path: the directory {tmp_path / 'later'} does not exist" in (
        result.stderr
    )
    assert json.loads(result.stdout)["sinks"]["audit"]["type"] == "file"
    assert not (tmp_path / "later").exists(), "check creates nothing"


NOBODY = 65534


@pytest.fixture
def locked_tree() -> Iterator[Path]:
    """A directory the user running ``check`` may enter: ``locked/`` (0555) it may not write in,
    ``free/`` (0777) it may. pytest's tmp_path is 0700, closed to another uid."""
    root = Path(tempfile.mkdtemp(prefix="bridge-check-"))
    root.chmod(0o755)
    (root / "locked").mkdir(mode=0o555)
    (root / "free").mkdir()
    (root / "free").chmod(0o777)
    try:
        yield root
    finally:
        (root / "locked").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(
    os.getuid() == 0 and not HAS_SETPRIV, reason="as root, needs setpriv to drop to a user"
)
@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            "locked/st/bridge.db",
            "warning: state.path: the directory {root}/locked/st does not exist and cannot be "
            "created: the directory {root}/locked is not writable by this user (uid {uid})",
        ),
        (
            "locked/bridge.db",
            "warning: state.path: the directory {root}/locked is not writable by this user "
            "(uid {uid})",
        ),
        ("free/st/bridge.db", None),  # created at the start: nothing to say
    ],
)
def test_check_warns_when_this_user_cannot_make_the_state_directory(
    locked_tree: Path, state: str, expected: str | None
) -> None:
    """The service user's ``check`` (systemd's ExecStartPre) says what its start would die of.
    Only a warning: whoever runs ``check`` may not be the service's user."""
    data = merged(BASE, {"sinks": {"audit": {"path": str(locked_tree / "free" / "e.jsonl")}}})
    data["state"] = {"path": str(locked_tree / state)}
    config = locked_tree / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    config.chmod(0o644)
    command = [str(EXECUTABLE), "check", "-c", str(config)]
    uid = os.getuid()
    if uid == 0:  # root may write anywhere: check as the service's kind of user
        command, uid = as_uid(NOBODY, command), NOBODY
    result = subprocess.run(
        command, cwd=locked_tree, env=cli_env(HOME=str(locked_tree)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stderr
    if expected is None:
        assert "state.path" not in result.stderr
    else:
        assert expected.format(root=locked_tree, uid=uid) in result.stderr
        assert result.stderr.count("state.path") == 1
    assert json.loads(result.stdout)["state"]["path"] == str(locked_tree / state)
    assert not (locked_tree / "free" / "st").exists(), "check creates nothing"


def test_directory_verdicts(tmp_path: Path) -> None:
    assert check_directory(tmp_path).verdict is Verdict.USABLE
    assert check_directory(tmp_path / "a" / "b").verdict is Verdict.MAYBE
    assert check_directory(Path("/proc/x")).verdict is Verdict.NEVER
    assert fixed_directory("/a/b/{inbox_id}/c/e.jsonl") == Path("/a/b")
    assert fixed_directory("/a/b/e-{inbox_id}.jsonl") == Path("/a/b")


def test_mount_type_takes_the_longest_mount_point() -> None:
    table = (
        "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"
        "23 22 0:22 / /proc rw - proc proc rw\n"
        "24 22 0:23 / /srv/my\\040data rw - tmpfs tmpfs rw\n"
        "not a mount line\n"
    )
    assert mount_type(table, Path("/proc/1/x")) == "proc"
    assert mount_type(table, Path("/procfs")) == "ext4"
    assert mount_type(table, Path("/srv/my data/x")) == "tmpfs"


def check_with_state(tmp_path: Path, state: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """``check`` on the base config with this ``state`` section, run as users run it."""
    data = merged(BASE, {"sinks": {"audit": {"path": str(tmp_path / "e.jsonl")}}})
    data["state"] = state
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [str(EXECUTABLE), "check", "-c", str(config)], cwd=tmp_path, env=cli_env(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_check_refuses_a_state_database_on_a_pseudo_filesystem(tmp_path: Path) -> None:
    # An error, not a warning: no user could ever create it there, so `run` would only exit 1
    # again and again under systemd's Restart=.
    result = check_with_state(tmp_path, {"path": "/proc/self/bridge.db", "min_free": 0})
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "state.path" in line]
    assert line == (
        "  state.path: /proc/self is on the kernel's proc filesystem, where no file can ever be "
        "created: the state database /proc/self/bridge.db cannot be there"
    ), line


def test_check_refuses_a_state_database_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a directory\n")
    result = check_with_state(tmp_path, {"path": str(tmp_path / "notes.txt" / "bridge.db")})
    assert result.returncode == 2, result.stderr
    assert (
        f"  state.path: {tmp_path / 'notes.txt'} is a file, so the directory "
        f"{tmp_path / 'notes.txt'} can never exist: the state database "
        f"{tmp_path / 'notes.txt' / 'bridge.db'} cannot be there"
    ) in result.stderr.splitlines()
    assert (tmp_path / "notes.txt").read_text() == "a file, not a directory\n"


def test_a_directory_below_a_pseudo_filesystem_is_named_with_its_mount(tmp_path: Path) -> None:
    verdict, message = check_directory(Path("/proc/nope/sub"))
    assert verdict is Verdict.NEVER
    assert message == (
        "/proc/nope/sub would be on the kernel's proc filesystem (/proc), where no file can ever "
        "be created"
    )


# --- values read as they are used --------------------------------------------------------------


def _guarded(*own: object) -> dict[str, Any]:
    route = {"name": "support", "sinks": ["agent"], "guard": {"own_addresses": list(own)}}
    return {"routes": [route]}


def test_own_addresses_are_each_one_address(tmp_path: Path) -> None:
    found = _problems(tmp_path, _guarded("not an address", 42, "Jane <jane@x.com>",
                                         "a@x.com, b@x.com", "", True))  # fmt: skip
    key = "routes[0] (support).guard.own_addresses"
    assert found == [
        f"{key}[0]: not an email address: 'not an address'",
        f"{key}[1]: expected an email address such as agent@example.com, got int 42",
        f"{key}[2]: 'Jane <jane@x.com>' is more than an address: write jane@x.com alone",
        f"{key}[3]: 'a@x.com, b@x.com' names 2 addresses: give each as an entry of its own",
        f"{key}[4]: not an email address: ''",
        f"{key}[5]: expected an email address such as agent@example.com, got a boolean (true)",
    ]


def test_own_addresses_in_their_usual_forms(tmp_path: Path) -> None:
    given = ("support@example.com", '"agent"@example.com', "bot@b\u00fccher.example", "${OWN}")
    config = load(tmp_path, merged(BASE, _guarded(*given)), env={"OWN": "me@x.com"})
    guard = config.routes[0].guard_config
    assert guard is not None
    assert guard.own_addresses == (*given[:3], "me@x.com")


def test_route_test_reads_own_addresses_as_check_does(tmp_path: Path) -> None:
    config = read_operator_config(text=yaml.safe_dump(merged(BASE, _guarded(42))), env={})
    (problem,) = config.problems["routes"]
    assert problem.startswith("routes[0] (support).guard.own_addresses[0]: expected an email")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("x${HOME.jsonl", "unclosed ${ ... } (write $${ for a literal ${)"),
        ("${HOME", "unclosed ${ ... } (write $${ for a literal ${)"),
        ("x/${1DIR}/e.jsonl", "a ${...} that is not ${VAR}, ${VAR:-default} or ${VAR:?message} "
                              "(write $${ for a literal ${)"),
        ("x/${DIR-x}/e.jsonl", "a ${...} that is not ${VAR}, ${VAR:-default} or ${VAR:?message} "
                               "(write $${ for a literal ${)"),
    ],
)  # fmt: skip
def test_a_dollar_brace_that_is_no_variable_is_an_error(
    tmp_path: Path, given: str, message: str
) -> None:
    (found,) = _problems(tmp_path, {"sinks": {"audit": {"path": given}}})
    assert found == f"sinks.audit.path: {message}"


def test_a_doubled_dollar_keeps_a_literal_dollar_brace(tmp_path: Path) -> None:
    config = load(tmp_path, merged(BASE, {"sinks": {"audit": {"path": "x$${HOME.jsonl"}}}))
    audit = config.sinks["audit"].options
    assert isinstance(audit, FileSinkOptions)
    assert audit.path == tmp_path / "x${HOME.jsonl"


def test_an_unclosed_dollar_brace_in_a_secret_does_not_show_it(tmp_path: Path) -> None:
    (found,) = _problems(tmp_path, {"sinks": {"agent": {"secret": "hunter2${x"}}})
    assert found.startswith("sinks.agent.secret: unclosed ${ ... }")
    assert "hunter2" not in found


# --- log.stats_interval ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"), [(None, 60.0), ("30s", 30.0), ("0s", 0.0), (0, 0.0), ("5m", 300.0)]
)
def test_stats_interval(tmp_path: Path, given: object, seconds: float) -> None:
    data = merged(BASE, {"log": {"stats_interval": given}} if given is not None else {})
    assert load(tmp_path, data).log.stats_interval == seconds


@pytest.mark.parametrize(
    ("given", "fragment"),
    [("500ms", "must be 0s (off) or at least 1s"), ("soon", "not a duration"), (30, "no unit")],
)
def test_stats_interval_problems(tmp_path: Path, given: object, fragment: str) -> None:
    (found,) = _problems(tmp_path, {"log": {"stats_interval": given}})
    assert found.startswith("log.stats_interval: ")
    assert fragment in found


# --- the lenient read of the operator commands -------------------------------------------------


def test_operator_config_reads_only_what_it_needs(tmp_path: Path) -> None:
    text = yaml.safe_dump(
        {
            "openmail": {"api_key": "${UNSET_KEY}", "bogus": 1},
            "state": {"path": "${STATE:-s/b.db}", "max_bytes": "lots"},
            "admin": {"listen": "127.0.0.1:9999", "token": "${UNSET_TOKEN}"},
            "sinks": {"a": {"type": "nope", "secret": "${UNSET_SECRET}"}},
            "routes": [{"name": "r", "sinks": ["a"]}],
        }
    )
    with pytest.raises(ConfigError):
        load_config(text=text, sink_types=SINK_TYPES, env={})
    config = read_operator_config(text=text, env={})
    assert config.state_path == Path.cwd() / "s" / "b.db"
    assert str(config.admin.listen) == "127.0.0.1:9999"
    assert config.admin.token is None
    assert config.token_problem is not None
    assert "UNSET_TOKEN" in config.token_problem
    assert config.sinks == ("a",)
    assert [r.name for r in config.routes] == ["r"]
    assert config.problems == {}
    config.require("state", "admin", "routes")


@pytest.mark.parametrize(("min_free", "warned"), [(1 << 60, True), ("1MiB", False)])
def test_check_warns_of_a_min_free_the_filesystem_can_never_meet(
    tmp_path: Path, min_free: int | str, warned: bool
) -> None:
    result = check_with_state(
        tmp_path, {"path": str(tmp_path / "st" / "bridge.db"), "min_free": min_free}
    )
    assert result.returncode == 0, result.stderr
    found = [line for line in result.stderr.splitlines() if "state.min_free" in line]
    if warned:
        (line,) = found
        assert "every event would be refused" in line
        assert str(tmp_path / "st") in line
    else:
        assert found == []
