"""Deployment files as product: the systemd unit verifies and scores <= 2.0, the Dockerfile passes
hadolint, the image's entrypoint runs as an unprivileged user against its default config and its
HEALTHCHECK follows the admin address, the compose file hands the agent the variable OpenMail's
handler reads, and the Kubernetes manifest and Prometheus rules are what they claim to be."""

from __future__ import annotations

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
from typing import Any

import pytest
import yaml
from conftest import free_port
from unprivileged import EXECUTABLE, HAS_SETPRIV, as_uid

from bridge.metrics import GaugeOnceSet, Metrics

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "openmail-bridge.service"
README = ROOT / "README.md"
INSTALLED = "/opt/openmail-bridge/bin/openmail-bridge"  # the README's venv


def installed_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose Exec lines point at the installed executable."""
    text = UNIT.read_text().replace(INSTALLED, str(EXECUTABLE))
    copy = tmp_path / "openmail-bridge.service"
    copy.write_text(text)
    return copy


def test_unit_is_notify_with_watchdog_and_hardening() -> None:
    lines = UNIT.read_text().splitlines()
    for line in ("Type=notify", "WatchdogSec=30", "StateDirectory=openmail-bridge",
                 "DynamicUser=yes", f"ExecStartPre={INSTALLED} check", "KillSignal=SIGTERM",
                 "Restart=on-failure",
                 "RestartPreventExitStatus=2", "ConfigurationDirectory=openmail-bridge",
                 "ConfigurationDirectoryMode=0755"):  # fmt: skip
        assert line in lines, line
    # A reload validates before it signals: systemd runs ExecReload= lines in order, stopping at
    # the first that fails.
    reload = [line for line in lines if line.startswith("ExecReload=")]
    assert reload == [f"ExecReload={INSTALLED} check", "ExecReload=/bin/kill -HUP $MAINPID"]


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
                   "STOPSIGNAL SIGTERM", "EXPOSE 8080 9464",
                   "ADMIN_LISTEN=0.0.0.0:9464"):  # fmt: skip
        assert needle in text, needle
    assert "127.0.0.1:9464" not in text  # the HEALTHCHECK follows ADMIN_LISTEN
    config = (ROOT / "deploy" / "container.yaml").read_text()
    assert "0.0.0.0:8080" in config
    assert "0.0.0.0:9464" in config


NOBODY = 65534


def _unprivileged(cmd: list[str]) -> list[str]:
    return as_uid(NOBODY, cmd)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bridge-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def healthcheck(admin_listen: str) -> int:
    """The Dockerfile's HEALTHCHECK command, run as Docker would, with ``ADMIN_LISTEN`` set."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", text)
    assert found, "no HEALTHCHECK ... CMD [...]"
    command = json.loads(found.group(1))
    assert command[0] == "python"
    env = {"PATH": os.environ["PATH"], "ADMIN_LISTEN": admin_listen}
    result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                            timeout=30, check=False)  # fmt: skip
    return result.returncode


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


@pytest.mark.skipif(not HAS_SETPRIV, reason="setpriv (util-linux) is not installed")
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


@pytest.mark.skipif(not HAS_SETPRIV, reason="setpriv (util-linux) is not installed")
def test_entrypoint_runs_unprivileged_serves_healthz_and_stops_on_sigterm(open_tmp: Path) -> None:
    env = _container_env(open_tmp)
    # The image's config, on free ports so tests can run in parallel: the webhook's by an edit, the
    # admin server's by ADMIN_LISTEN, the variable the HEALTHCHECK reads too.
    port = free_port()
    env["ADMIN_LISTEN"] = f"127.0.0.1:{port}"
    text = (ROOT / "deploy" / "container.yaml").read_text().replace("0.0.0.0:8080", "127.0.0.1:0")
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
        listening = None
        for line in proc.stderr:  # each line as the bridge writes it; the end when it exits
            stderr.append(line)
            if '"admin.listening"' in line:
                listening = json.loads(line)["listen"]
                break
        if listening is None:
            pytest.fail(f"bridge exited {proc.wait(timeout=20)}: {''.join(stderr)}")
        assert listening == env["ADMIN_LISTEN"]
        # Keep reading, so a full pipe never blocks the bridge's logging.
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
        reader.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        assert healthcheck(env["ADMIN_LISTEN"]) == 0
        assert (
            healthcheck(f"0.0.0.0:{port}") == 0
        )  # the image's wildcard address, asked on loopback
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        assert healthcheck(env["ADMIN_LISTEN"]) != 0
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


# --- compose, Kubernetes, Prometheus ---------------------------------------------------------


def _yaml_documents(name: str) -> list[Any]:
    return list(yaml.safe_load_all((ROOT / "deploy" / name).read_text()))


def test_compose_gives_the_agent_the_variable_openmails_handler_reads() -> None:
    (compose,) = _yaml_documents("compose.yaml")
    agent = compose["services"]["agent"]["environment"]
    bridge = compose["services"]["openmail-bridge"]["environment"]
    # OpenMail's documented handler reads os.environ['OPENMAIL_WEBHOOK_SECRET'] and nothing else:
    # the agent gets that variable, holding the very value the bridge re-signs with.
    assert set(agent) == {"OPENMAIL_WEBHOOK_SECRET"}
    assert agent["OPENMAIL_WEBHOOK_SECRET"] == bridge["AGENT_WEBHOOK_SECRET"]
    assert agent["OPENMAIL_WEBHOOK_SECRET"].startswith("${AGENT_WEBHOOK_SECRET:?")
    # Every *_FILE the bridge is given names a secret compose mounts for it.
    mounted = compose["services"]["openmail-bridge"]["secrets"]
    files = {v for k, v in bridge.items() if k.endswith("_FILE")}
    assert files == {f"/run/secrets/{name}" for name in mounted}
    assert set(mounted) <= set(compose["secrets"])


def test_kubernetes_manifest_is_one_recreated_pod_with_the_sidecar_and_its_state() -> None:
    docs = {doc["kind"]: doc for doc in _yaml_documents("kubernetes.yaml")}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    spec = docs["Deployment"]["spec"]
    # The state's lock admits one bridge per volume: never two Pods at once.
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"agent", "openmail-bridge"}
    bridge, agent = containers["openmail-bridge"], containers["agent"]
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    assert ports == {"webhook": 8080, "admin": 9464}  # deploy/container.yaml's addresses
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in bridge["volumeMounts"]}
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert mounts["state"] == "/var/lib/openmail-bridge"  # the image's STATE_DIRECTORY
    # The bridge reads its secrets from the mounted files; the agent gets the one variable its
    # OpenMail handler reads, from the same Secret key the bridge re-signs with.
    env = {e["name"]: e for e in bridge["env"]}
    secret_dir = mounts["secrets"]
    for name in ("OPENMAIL_API_KEY", "OPENMAIL_WEBHOOK_SECRET", "AGENT_WEBHOOK_SECRET"):
        assert env[f"{name}_FILE"]["value"] == f"{secret_dir}/{name.lower()}"
    (agent_env,) = agent["env"]
    assert agent_env["name"] == "OPENMAIL_WEBHOOK_SECRET"
    assert agent_env["valueFrom"]["secretKeyRef"]["key"] == "agent_webhook_secret"
    assert env["AGENT_WEBHOOK_URL"]["value"] == "http://127.0.0.1:3000/webhooks"
    assert {"containerPort": 3000, "name": "http"} in agent["ports"]
    selector = docs["Service"]["spec"]["selector"]
    assert selector == spec["template"]["metadata"]["labels"] == spec["selector"]["matchLabels"]


def _exported_metric_names() -> set[str]:
    """Every series name bridge/metrics.py exports, as PromQL sees it."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    metrics = Metrics()
    for part in vars(metrics).values():
        if isinstance(part, GaugeOnceSet):  # exported once set: by a bridge with that part
            part.set(0)
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes[family.type]
    }


def test_prometheus_rules_alert_on_exported_metrics_for_each_troubleshooting_row() -> None:
    (rules,) = _yaml_documents("prometheus-rules.yaml")
    (group,) = rules["groups"]
    alerts = group["rules"]
    exported = _exported_metric_names()
    assert "openmail_bridge_deliveries_total" in exported  # the name derivation itself
    for alert in alerts:
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert
        named = re.findall(r"\bopenmail_bridge_\w+", alert["expr"])
        assert named, alert["alert"]
        assert set(named) <= exported, (alert["alert"], set(named) - exported)
        assert alert["annotations"]["summary"]
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    assert len({a["alert"] for a in alerts}) == len(alerts)
    # The troubleshooting table's failure modes, each by the log event or reason it names.
    described = "\n".join(a["annotations"]["description"] for a in alerts)
    for symptom in ("ws.rejected", "key_rejected", "too_many_connections", "subscribe_rejected",
                    "bad_signature", "stale_timestamp", "spool_full", "store.write_failed",
                    "is in use by another openmail-bridge", "ws.cursor_reset", "ws.replay_limit",
                    "delivery.dead_lettered", "event.unrouted",
                    "store.corrupt_moved_aside"):  # fmt: skip
        assert symptom in described, symptom
        assert symptom in README.read_text(), symptom  # still a row of the table
