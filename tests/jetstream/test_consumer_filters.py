"""An existing durable consumer filtered otherwise than ``nats.consume.filter_subjects`` hands
this sidecar another part of the stream (another inbox's mail), and what it acks of it is gone
for the sidecar the consumer was made for: it is unusable, like one that would lose events. The
filters are compared as the server reports them (``filter_subject`` or ``filter_subjects``, none
for the whole stream)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from nats.js.api import AckPolicy, ConsumerConfig

from bridge.config import NatsConsumeConfig
from bridge.sources.nats_consumer import (
    FIX_HINT,
    consumer_config,
    consumer_problems,
    describe_problems,
    fix_hint,
)
from tests.conftest import events_named, read_lines, running_bridge, wait_until

from .conftest import NatsServer, create_stream, event_body, load_raw, nats_client, sidecar_raw

INB_A = "openmail.inb_a.>"
INB_B = "openmail.inb_b.>"


async def made_on_server(server: NatsServer, **filters: Any) -> ConsumerConfig:
    """The config the server reports for ``agent-support`` made with ``filters`` as given."""
    async with nats_client(server) as client:
        js = client.jetstream()
        await js.add_consumer(
            "OPENMAIL",
            ConsumerConfig(durable_name="agent-support", ack_policy=AckPolicy.EXPLICIT, **filters),
        )
        info = await js.consumer_info("OPENMAIL", "agent-support")
    return info.config


def configured(*filters: str) -> ConsumerConfig:
    return consumer_config(NatsConsumeConfig(consumer="agent-support", filter_subjects=filters))


SAME = {
    "one_as_filter_subject": ({"filter_subject": INB_A}, (INB_A,)),
    "one_as_filter_subjects": ({"filter_subjects": [INB_A]}, (INB_A,)),
    "two_in_another_order": ({"filter_subjects": [INB_B, INB_A]}, (INB_A, INB_B)),
    "none": ({}, ()),
    "an_empty_filter_subject": ({"filter_subject": ""}, ()),
}


@pytest.mark.parametrize(("made", "config"), SAME.values(), ids=SAME.keys())
async def test_the_same_filters_in_whatever_form_the_server_reports_them_are_usable(
    nats_server: NatsServer, made: dict[str, Any], config: tuple[str, ...]
) -> None:
    await create_stream(nats_server)
    found = await made_on_server(nats_server, **made)
    assert consumer_problems(found, configured(*config)) == {}


DIFFERENT = {
    "another_inbox": ({"filter_subject": INB_A}, (INB_B,), [INB_A], [INB_B]),
    "one_of_two": ({"filter_subjects": [INB_A, INB_B]}, (INB_B,), [INB_A, INB_B], [INB_B]),
    "whole_stream_on_the_server": ({}, (INB_B,), [], [INB_B]),
    "whole_stream_configured": ({"filter_subjects": [INB_A]}, (), [INB_A], []),
}


@pytest.mark.parametrize(
    ("made", "config", "server", "needed"), DIFFERENT.values(), ids=DIFFERENT.keys()
)
async def test_other_filters_make_the_consumer_unusable(
    nats_server: NatsServer,
    made: dict[str, Any],
    config: tuple[str, ...],
    server: list[str],
    needed: list[str],
) -> None:
    await create_stream(nats_server)
    found = await made_on_server(nats_server, **made)
    problems = consumer_problems(found, configured(*config))
    assert problems == {"filter_subjects": {"server": server, "needed": needed}}


def test_the_hint_names_both_filters_and_each_fix() -> None:
    problems = {"filter_subjects": {"server": [INB_A], "needed": [INB_B]}}
    hint = fix_hint("OPENMAIL", "agent-support", problems)
    assert f"set nats.consume.filter_subjects to [{INB_A}] and restart" in hint
    assert "nats consumer rm OPENMAIL agent-support" in hint
    assert f"create it with [{INB_B}]" in hint
    assert "If another sidecar consumes from agent-support" in hint
    line = describe_problems("OPENMAIL", "agent-support", problems)
    assert line.startswith(
        f"consumer agent-support on stream OPENMAIL would misdirect mail: it delivers "
        f"filter_subjects [{INB_A}], not the configured [{INB_B}]; "
    )
    assert line.endswith(hint)
    whole = {"filter_subjects": {"server": [], "needed": [INB_B]}}
    assert "to [] (the whole stream) and restart" in fix_hint("OPENMAIL", "agent-support", whole)


def test_a_consumer_that_would_lose_events_keeps_its_hint() -> None:
    problems: dict[str, dict[str, object]] = {"max_deliver": {"server": 3, "needed": -1}}
    assert fix_hint("OPENMAIL", "agent-support", problems) == FIX_HINT
    line = describe_problems("OPENMAIL", "agent-support", problems)
    assert "would lose events: max_deliver is 3 (needs -1)" in line
    both = {**problems, "filter_subjects": {"server": [INB_A], "needed": [INB_B]}}
    assert " would misdirect mail and would lose events: " in describe_problems(
        "OPENMAIL", "agent-support", both
    )


async def test_a_sidecar_refuses_a_consumer_filtered_for_another_inbox(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    await create_stream(nats_server)
    await made_on_server(nats_server, filter_subject=INB_A)
    async with nats_client(nats_server) as client:
        await client.jetstream().publish(
            "openmail.inb_a.message_received", event_body("evt_a", inbox="inb_a")
        )
    raw = sidecar_raw(tmp_path, nats_server, consume={"filter_subjects": [INB_B]})
    out = tmp_path / "events.jsonl"
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(load_raw(tmp_path, raw)) as bridge:
            await wait_until(
                lambda: bool(events_named(logs, "nats.consumer_invalid") or read_lines(out)), 10
            )
            readiness, parts = bridge.readiness()
            status: Any = await bridge.status()
    # inb_a's mail stays in the stream for the sidecar the consumer was made for.
    assert read_lines(out) == []
    async with nats_client(nats_server) as client:
        info = await client.jetstream().consumer_info("OPENMAIL", "agent-support")
    assert (info.delivered.stream_seq, info.num_pending) == (0, 1)
    assert not events_named(logs, "nats.consumer_differs")
    (error,) = events_named(logs, "nats.consumer_invalid")
    assert error["invalid"] == {"filter_subjects": {"server": [INB_A], "needed": [INB_B]}}
    assert f"set nats.consume.filter_subjects to [{INB_A}]" in error["hint"]
    assert f"create it with [{INB_B}]" in error["hint"]
    assert (readiness, parts["nats"]) == ("unavailable", "consumer_invalid")
    consumer = status["nats"]["consumer"]
    assert consumer["state"] == "consumer_invalid"
    assert "would misdirect mail" in consumer["last_error"]
