"""The README's "Running under systemd", followed into a scratch root: its install lines run as
written (``sudo`` dropped, ``/etc`` and ``/opt`` moved under the root), then the unit's
``ExecStartPre=``, ``ExecStart=`` and ``ExecReload=`` run as an unprivileged random uid the way
systemd starts them: ``Environment=``, the ``EnvironmentFile=`` read by root, ``$STATE_DIRECTORY``
owned by that uid, ``UMask=``. No systemd boots here; the unit itself is checked by
``systemd-analyze`` in test_deploy.py and sd_notify in test_systemd.py."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families
from unprivileged import EXECUTABLE, HAS_SETPRIV, as_uid, setpriv

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "openmail-bridge.service"
README = ROOT / "README.md"
# The README lines a scratch root cannot run, and what stands in for each: the venv is this
# checkout's (linked where the README's venv puts the executable), systemd is emulated below.
NOT_RUN = {
    "apt install python3-venv",
    "python3 -m venv /opt/openmail-bridge",
    "/opt/openmail-bridge/bin/pip install .",
    "systemctl daemon-reload && systemctl enable --now openmail-bridge",
    "systemctl reload openmail-bridge",
    "journalctl -u openmail-bridge -f",
}
SECRETS = {
    "OPENMAIL_API_KEY": "om_test_systemd_layout_key",
    "OPENMAIL_WEBHOOK_SECRET": "systemd-layout-webhook-secret",
    "AGENT_WEBHOOK_SECRET": "systemd-layout-agent-secret",
}

pytestmark = pytest.mark.skipif(not HAS_SETPRIV, reason="setpriv (util-linux) is not installed")


def readme_commands() -> list[str]:
    """The shell lines of the section's code block, comments and ``sudo`` removed."""
    section = README.read_text().split("## Running under systemd\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [line.replace("sudo ", "") for line in lines if line]


def unit_service() -> dict[str, list[str]]:
    """The ``[Service]`` section: each key with its values in order (keys may repeat)."""
    section = UNIT.read_text().split("\n[Service]\n", 1)[1].split("\n[", 1)[0]
    values: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


class Layout:
    """A scratch root holding what the README installs, and systemd's part, emulated."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uid = random.randint(61184, 65519)  # systemd's DynamicUser= range
        self.service = unit_service()
        self.state = self.path("/var/lib/openmail-bridge")
        self.config = self.path("/etc/openmail-bridge/config.yaml")
        self.env_file = self.path("/etc/openmail-bridge/env")

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def relocate(self, text: str) -> str:
        return re.sub(r"(?<![\w.])/(etc|opt)/", lambda m: f"{self.root}/{m.group(1)}/", text)

    def install(self) -> None:
        """The README's lines, run as written into the root; the stand-ins for the rest."""
        commands = readme_commands()
        assert set(commands) >= NOT_RUN, set(commands)
        (self.path("/etc/systemd/system")).mkdir(parents=True)
        script = "set -e\n" + "\n".join(self.relocate(c) for c in commands if c not in NOT_RUN)
        result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        venv_bin = self.path("/opt/openmail-bridge/bin")
        venv_bin.mkdir(parents=True)
        (venv_bin / "openmail-bridge").symlink_to(EXECUTABLE)
        # systemd creates the state directory for the dynamic user at start.
        self.state.parent.mkdir(parents=True)
        self.state.mkdir(mode=int(self.service["StateDirectoryMode"][0], 8))
        os.chown(self.state, self.uid, self.uid)

    def environment(self) -> dict[str, str]:
        """What systemd hands the service: Environment=, the EnvironmentFile= (read as root), the
        directories it manages. Nothing inherited from this process."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "STATE_DIRECTORY": str(self.state),
            "CONFIGURATION_DIRECTORY": str(self.config.parent),
        }
        for assignment in self.service["Environment"]:
            key, value = assignment.split("=", 1)
            env[key] = self.relocate(value)
        for name in self.service["EnvironmentFile"]:
            for line in Path(self.relocate(name.removeprefix("-"))).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, value = line.split("=", 1)
                    env[key] = value
        return env

    def command(self, exec_line: str, mainpid: int | None = None) -> list[str]:
        """An Exec line as the unit's dynamic user with the unit's UMask=, under the root."""
        line = self.relocate(exec_line).replace("$MAINPID", str(mainpid))
        umask = self.service["UMask"][0]
        wrapped = ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *shlex.split(line)]
        return as_uid(self.uid, wrapped)

    def run(self, exec_line: str, mainpid: int | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(exec_line, mainpid), env=self.environment(),
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    def reload(self, mainpid: int) -> list[int]:
        """``systemctl reload``: the ExecReload= lines in order, stopping at the first failure."""
        codes = []
        for line in self.service["ExecReload"]:
            codes.append(self.run(line, mainpid).returncode)
            if codes[-1] != 0:
                break
        return codes


@pytest.fixture
def layout() -> Iterator[Layout]:
    # Not tmp_path: pytest keeps its parents 0700, and the dynamic user must traverse to the root
    # as it does to / on a host.
    root = Path(tempfile.mkdtemp(prefix="bridge-systemd-"))
    root.chmod(0o755)
    try:
        layout = Layout(root)
        layout.install()
        yield layout
    finally:
        shutil.rmtree(root, ignore_errors=True)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def operator_edits(layout: Layout, admin_port: int) -> None:
    """What the README says to edit: the three secrets, the listen addresses; and, for a test,
    a WebSocket URL nothing answers, so the bridge never leaves this machine."""
    text = layout.env_file.read_text()
    for name, value in SECRETS.items():
        text, count = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
        assert count == 1, name
    layout.env_file.write_text(text)
    edit(layout.config, "127.0.0.1:8080", f"127.0.0.1:{free_port()}")
    edit(layout.config, "127.0.0.1:9464", f"127.0.0.1:{admin_port}")
    edit(layout.config, "openmail:\n", "openmail:\n  websocket: {url: 'ws://127.0.0.1:9/v1/ws'}\n")


def reloads(admin_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "openmail_bridge_config_reloads"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def answers(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_the_readme_installs_the_layout_the_unit_names(layout: Layout) -> None:
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    config_dir = layout.config.parent
    assert layout.service["ConfigurationDirectory"] == [config_dir.name]
    assert mode(config_dir) == int(layout.service["ConfigurationDirectoryMode"][0], 8) == 0o755
    assert mode(layout.config) == 0o644
    assert mode(layout.env_file) == 0o600
    assert layout.env_file.stat().st_uid == 0  # only systemd (root) reads the secrets
    assert (layout.path("/etc/systemd/system") / UNIT.name).read_text() == UNIT.read_text()
    env = layout.environment()
    assert Path(env["OPENMAIL_BRIDGE_CONFIG"]) == layout.config
    # The dynamic user, with no capability at all, reads the config but not the secrets file.
    # (The bridge's own commands below may be given CAP_DAC_READ_SEARCH to reach this checkout's
    # venv, which would hide a permission problem: this is the check that cannot hide one.)
    cat = [*setpriv(layout.uid), "cat"]
    assert subprocess.run([*cat, str(layout.config)], capture_output=True).returncode == 0
    denied = subprocess.run([*cat, str(layout.env_file)], capture_output=True, text=True)
    assert "Permission denied" in denied.stderr


async def test_the_units_commands_run_as_a_dynamic_user(layout: Layout) -> None:
    admin_port = free_port()
    operator_edits(layout, admin_port)
    (pre,) = layout.service["ExecStartPre"]
    check = layout.run(pre)
    assert check.returncode == 0, check.stderr
    for value in SECRETS.values():
        assert value not in check.stdout + check.stderr  # it lands in the journal

    (start,) = layout.service["ExecStart"]
    proc = await asyncio.create_subprocess_exec(*layout.command(start), env=layout.environment(),
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        await wait_until(lambda: answers(admin_port) or proc.returncode is not None, timeout=20)
        assert proc.returncode is None, "the bridge exited"
        # A broken file: `systemctl reload` fails at the check, no SIGHUP is sent.
        good = layout.config.read_text()
        layout.config.write_text(good + "sinks_typo: {}\n")
        codes = layout.reload(proc.pid)
        assert codes == [2], codes
        assert proc.returncode is None
        assert reloads(admin_port).get("invalid", 0) == 0  # the bridge never saw the bad file
        # A good edit: the check passes, the SIGHUP is sent and the bridge applies it.
        layout.config.write_text(good.replace("level: info", "level: warning"))
        assert layout.reload(proc.pid) == [0, 0]
        await wait_until(lambda: reloads(admin_port).get("ok", 0) == 1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    db = layout.state / "bridge.db"
    assert db.stat().st_uid == layout.uid
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_a_config_error_exits_2_which_the_unit_does_not_restart(layout: Layout) -> None:
    operator_edits(layout, free_port())
    edit(layout.config, "type: http", "type: htp")
    assert layout.service["Restart"] == ["on-failure"]
    assert layout.service["RestartPreventExitStatus"] == ["2"]
    for line in (*layout.service["ExecStartPre"], *layout.service["ExecStart"]):
        result = layout.run(line)
        assert result.returncode == 2, result.stderr
        assert "sinks.agent.type" in result.stderr
