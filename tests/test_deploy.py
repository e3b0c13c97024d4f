"""Deployment files as product: the systemd unit verifies and scores <= 2.0, the Dockerfile passes
hadolint, and the image's entrypoint runs as an unprivileged user against its default config."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "openmail-bridge.service"
EXECUTABLE = Path(sys.executable).parent / "openmail-bridge"


def installed_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose Exec lines point at the installed executable."""
    text = UNIT.read_text().replace("/usr/local/bin/openmail-bridge", str(EXECUTABLE))
    copy = tmp_path / "openmail-bridge.service"
    copy.write_text(text)
    return copy


def test_unit_is_notify_with_watchdog_and_hardening() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "StateDirectory=openmail-bridge", "DynamicUser=yes",
                 "ExecStartPre=/usr/local/bin/openmail-bridge check", "KillSignal=SIGTERM",
                 "ExecReload=/bin/kill -HUP $MAINPID"):  # fmt: skip
        assert line in text, line


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify reports problems on stderr; unrelated host units may be mentioned, ours must not be.
    ours = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert not ours, result.stderr


def test_systemd_security_exposure_at_most_2(tmp_path: Path) -> None:
    unit = installed_unit(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for needle in ("FROM python:3.11-slim", "USER 10001", "VOLUME", "HEALTHCHECK", "/healthz",
                   "STOPSIGNAL SIGTERM", "EXPOSE 8080 9464"):  # fmt: skip
        assert needle in text, needle
    config = (ROOT / "deploy" / "container.yaml").read_text()
    assert "0.0.0.0:8080" in config
    assert "0.0.0.0:9464" in config


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# A checkout may sit under a directory only root can enter (mktemp -d makes them 0700), where the
# image would have the bridge in /usr/local. Then nobody is given CAP_DAC_READ_SEARCH, which lets
# it read the installed code and nothing more: every write still needs real permission.
READ_SEARCH = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@functools.cache
def _nobody_prefix() -> tuple[str, ...]:
    probe = subprocess.run([*NOBODY, str(EXECUTABLE), "--version"], capture_output=True, timeout=60)
    return tuple(NOBODY if probe.returncode == 0 else [*NOBODY, *READ_SEARCH])


def _unprivileged(cmd: list[str]) -> list[str]:
    return [*_nobody_prefix(), *cmd]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bridge-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _container_env(tmp_path: Path) -> dict[str, str]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENMAIL", "AGENT"))}
    for name, value in (("OPENMAIL_API_KEY", "om_test_container_key"),
                        ("OPENMAIL_WEBHOOK_SECRET", "container-webhook-secret"),
                        ("AGENT_WEBHOOK_SECRET", "container-agent-secret")):  # fmt: skip
        (secrets / name).write_text(value + "\n")
        env[f"{name}_FILE"] = str(secrets / name)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    os.chmod(secrets, 0o755)
    for f in secrets.iterdir():
        f.chmod(0o644)
    env |= {
        "STATE_DIRECTORY": str(state),
        "AGENT_WEBHOOK_URL": "http://127.0.0.1:9/webhooks",
        "OPENMAIL_WS_URL": "ws://127.0.0.1:9/v1/ws",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return env


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_entrypoint_check_as_unprivileged_user_with_file_secrets(open_tmp: Path) -> None:
    env = _container_env(open_tmp)
    env["OPENMAIL_BRIDGE_CONFIG"] = str(ROOT / "deploy" / "container.yaml")
    result = subprocess.run(
        _unprivileged([str(EXECUTABLE), "check"]), capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["state"]["path"] == str(open_tmp / "state" / "bridge.db")
    assert resolved["openmail"]["api_key"] == "***"
    assert "container-webhook-secret" not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_entrypoint_runs_unprivileged_serves_healthz_and_stops_on_sigterm(open_tmp: Path) -> None:
    env = _container_env(open_tmp)
    # The image's config, with its fixed ports swapped for free ones so tests can run in parallel.
    text = (ROOT / "deploy" / "container.yaml").read_text()
    text = text.replace("0.0.0.0:8080", "127.0.0.1:0").replace("0.0.0.0:9464", "127.0.0.1:0")
    config = open_tmp / "config.yaml"
    config.write_text(text)
    config.chmod(0o644)
    env["OPENMAIL_BRIDGE_CONFIG"] = str(config)
    proc = subprocess.Popen(_unprivileged([str(EXECUTABLE), "run"]), env=env, text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    assert proc.stderr is not None
    stderr: list[str] = []
    reader: threading.Thread | None = None
    try:
        port = None
        for line in proc.stderr:  # each line as the bridge writes it; the end when it exits
            stderr.append(line)
            if '"admin.listening"' in line:
                port = json.loads(line)["listen"].rsplit(":", 1)[1]
                break
        if port is None:
            pytest.fail(f"bridge exited {proc.wait(timeout=20)}: {''.join(stderr)}")
        # Keep reading, so a full pipe never blocks the bridge's logging.
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
        reader.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        reader.join(timeout=5)
        assert code == 0, "".join(stderr)
        db = open_tmp / "state" / "bridge.db"
        assert db.exists()
        assert db.stat().st_uid == 65534
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader is not None:
            reader.join(timeout=5)
        proc.stderr.close()
