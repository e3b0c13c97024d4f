"""A reload keeps the running ``nats:`` section (its changes wait for a restart): a NATS sink
the new config brings must be served by that section, or the reload is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.reload import usable_with
from bridge.supervisor import Supervisor
from tests.conftest import make_config
from tests.jetstream.test_config import base, load

from .conftest import NatsServer, nats_section


def test_a_sink_only_the_new_nats_section_covers_is_refused(tmp_path: Path) -> None:
    old = load(tmp_path, base())
    new = load(
        tmp_path,
        base(
            nats={"stream": {"subjects": ["openmail.>", "agents.>"]}},
            sinks={"agents": {"type": "nats", "subject": "agents.{inbox_id}"}},
        ),
    )
    with pytest.raises(ConfigError) as refused:
        usable_with(old, new)
    (problem,) = refused.value.problems
    assert problem.startswith("sinks.agents.subject: publishes to agents.*")
    assert "the running nats: section" in problem


def test_a_new_section_that_still_serves_every_sink_is_used(tmp_path: Path) -> None:
    old = load(tmp_path, base())
    new = load(tmp_path, base(nats={"stream": {"duplicate_window": "20m"}}))
    assert usable_with(old, new) is new
    assert usable_with(old, old) is old


async def test_a_running_bridge_refuses_the_reload_and_keeps_publishing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = make_config(tmp_path, nats=nats_section(nats_server), sinks={"bus": {"type": "nats"}})
    widened = nats_section(nats_server)
    widened["stream"]["subjects"] = ["openmail.>", "agents.>"]
    wanted = make_config(
        tmp_path,
        nats=widened,
        sinks={"bus": {"type": "nats"}, "agents": {"type": "nats", "subject": "agents.{inbox_id}"}},
    )
    bridge = Supervisor(config, reload_config=lambda: wanted)
    await bridge.start()
    try:
        assert await bridge.reload() is False
        assert bridge.last_reload["result"] == "rejected"
        assert "agents" not in bridge.dispatcher.workers
    finally:
        await bridge.stop()
