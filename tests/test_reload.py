"""bridge.reload: what a SIGHUP applies and what it leaves for a restart, on plain configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.config import Config, build_config
from bridge.health import SinkState
from bridge.reload import applicable_part, restart_only_changes
from bridge.sinks import SINK_TYPES
from tests.conftest import bridge_config_dict, deep_merge


def config(tmp_path: Path, **overrides: Any) -> Config:
    raw = deep_merge(bridge_config_dict(tmp_path), overrides)
    return build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})


def test_log_level_and_event_loop_wait_for_a_restart_while_stats_apply(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(
        tmp_path,
        log={"level": "debug", "format": "console", "stats_interval": "5s"},
        event_loop="asyncio",
    )
    assert restart_only_changes(old, new) == ["log.level/format", "event_loop"]
    applied = applicable_part(old, new)
    assert (applied.log.level, applied.log.format) == (old.log.level, old.log.format)
    assert applied.event_loop == old.event_loop
    assert applied.log.stats_interval == 5.0  # the stats line's interval applies on SIGHUP


def test_an_unchanged_config_needs_no_restart(tmp_path: Path) -> None:
    old = config(tmp_path)
    assert restart_only_changes(old, config(tmp_path)) == []
    assert applicable_part(old, config(tmp_path)) == config(tmp_path)


def test_the_webhook_socket_waits_for_a_restart_its_secret_does_not(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(
        tmp_path,
        openmail={"webhook": {"secret": "whsec_rotated_0000", "max_connections": 7}},
    )
    [section] = restart_only_changes(old, new)
    assert section.startswith("openmail.webhook.")
    assert "max_connections" in section
    applied = applicable_part(old, new)
    assert applied.openmail.webhook.max_connections == old.openmail.webhook.max_connections
    assert applied.openmail.webhook.secret == new.openmail.webhook.secret


def test_a_replaced_workers_state_goes_on_but_its_dead_letter_counts_restart() -> None:
    """What ``/status`` shows carries over; the dispatcher counts a new worker's own dead letters
    from zero (``dlq_changes``), so carried counts would read as rows another process purged."""
    old = SinkState(
        delivered=7,
        dead=2,
        dead_recorded=1,
        last_error="HTTP 503",
        last_error_at=10.0,
        last_delivered_at=12.0,
    )
    new = old.carried_over()
    assert new == SinkState(
        delivered=7, last_error="HTTP 503", last_error_at=10.0, last_delivered_at=12.0
    )
    assert new is not old
    new.delivered += 1
    assert old.delivered == 7
