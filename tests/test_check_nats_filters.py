"""``check`` refuses a ``nats.consume.filter_subjects`` entry the stream's subjects cannot match:
such a consumer would be created and bound, ready and ``consuming``, and never receive a message.
A filter is fine when some subject it matches is one the stream takes, wildcards on either side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import build_config
from bridge.errors import ConfigError
from bridge.nats import subjects
from bridge.sinks import SINK_TYPES
from tests.conftest import run_cli, write_config


def sidecar(filters: list[str], stream: list[str] | None = None) -> dict[str, Any]:
    """A pure sidecar consuming ``filters`` from a stream of ``stream`` (default ``openmail.>``)."""
    nats: dict[str, Any] = {
        "servers": ["nats://127.0.0.1:4222"],
        "consume": {"consumer": "agent-support", "filter_subjects": filters},
    }
    if stream is not None:
        nats["stream"] = {"subjects": stream}
    return {
        "openmail": {"websocket": {"enabled": False}, "webhook": {"enabled": False}},
        "nats": nats,
        "sinks": {"audit": {"type": "file", "path": "out.jsonl"}},
    }


def problems(tmp_path: Path, raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    return info.value.problems


def loads(tmp_path: Path, raw: dict[str, Any]) -> bool:
    build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    return True


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("openmail.>", "openmail.inb_x.>", True),
        ("openmail.*.message.received", "openmail.>", True),
        ("mail.>", "openmail.>", False),
        ("openmail.*", "openmail.inb_x", True),
        ("openmail.*", "openmail.inb_x.>", False),  # `*` is one token, `>` at least one more
        ("openmail.*.*", "openmail.>", True),
        ("openmail", "openmail.>", False),  # `>` needs a token after it
        ("openmail.inb_a.>", "openmail.inb_b.>", False),
        ("openmail.*.received", "openmail.inb_a.*", True),
        ("openmail.*.received", "openmail.inb_a.sent", False),
        (">", "anything.at.all", True),
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
    ],
)
def test_two_filters_overlap_when_one_subject_matches_both(a: str, b: str, overlap: bool) -> None:
    assert subjects.overlaps(a, b) is overlap
    assert subjects.overlaps(b, a) is overlap


@pytest.mark.parametrize(
    ("filters", "stream", "path", "fragment"),
    [
        (["mail.inb_demo_support.>"], None, "filter_subjects[0]", "mail.inb_demo_support.>"),
        (
            ["openmail.inb_a.>", "other.>"],
            ["openmail.>"],
            "filter_subjects[1]",
            "matches no subject of nats.stream.subjects (openmail.>)",
        ),
        (["openmail.inb_a.>"], ["openmail.inb_b.>", "audit.>"], "filter_subjects[0]", "audit.>"),
        (["openmail"], None, "filter_subjects[0]", "openmail.>"),
    ],
)
def test_a_filter_outside_the_stream_names_its_key_and_the_stream(
    tmp_path: Path, filters: list[str], stream: list[str] | None, path: str, fragment: str
) -> None:
    found = problems(tmp_path, sidecar(filters, stream))
    assert len(found) == 1, found
    assert found[0].startswith(f"nats.consume.{path}: "), found[0]
    assert fragment in found[0]
    assert "would receive nothing" in found[0]


@pytest.mark.parametrize(
    ("filters", "stream"),
    [
        (["openmail.inb_x.>"], None),
        (["openmail.*.message.received"], None),
        (["openmail.>"], ["openmail.inb_a.>"]),  # wider than the stream: matches part of it
        (["openmail.*.*"], ["openmail.>"]),
        (["openmail.inb_a.>", "openmail.inb_b.>"], ["openmail.inb_a.>", "openmail.inb_b.>"]),
        ([], None),  # no filter: the whole stream
    ],
)
def test_a_filter_matching_part_of_the_stream_is_fine(
    tmp_path: Path, filters: list[str], stream: list[str] | None
) -> None:
    assert loads(tmp_path, sidecar(filters, stream))


def test_a_filter_that_is_not_a_subject_is_named_once(tmp_path: Path) -> None:
    found = problems(tmp_path, sidecar(["openmail.>.x"]))
    assert found == ["nats.consume.filter_subjects[0]: 'openmail.>.x' is not a NATS subject"]


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (["openmail.>.x"], "nats.stream.subjects[0]: 'openmail.>.x' is not a NATS subject"),
        ([], "nats.stream.subjects: names no subject"),
    ],
)
def test_stream_subjects_with_a_problem_are_not_held_against_a_filter(
    tmp_path: Path, stream: list[str], problem: str
) -> None:
    assert problems(tmp_path, sidecar(["openmail.inb_a.>"], stream)) == [problem]


async def test_check_refuses_a_filter_outside_the_stream(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", sidecar(["mail.inb_demo_support.>"]))
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 2, (out, err)
    assert "nats.consume.filter_subjects[0]: 'mail.inb_demo_support.>'" in err
    assert "configuration is valid" not in out + err
