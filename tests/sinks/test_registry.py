"""bridge.sinks: the registry builds each sink from a loaded config, checking its options once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import SinkConfig, build_config
from bridge.sinks import SINK_TYPES
from bridge.sinks.file import FileSink, FileSinkOptions
from bridge.sinks.http import HttpSink
from bridge.sinks.stdout import StdoutSink, StdoutSinkOptions


def test_each_type_builds_its_sink_from_a_loaded_config(tmp_path: Path) -> None:
    raw = {
        "openmail": {"api_key": "om_key", "webhook": {"enabled": False}},
        "sinks": {
            "agent": {"type": "http", "url": "http://127.0.0.1:3000/hook"},
            "audit": {"type": "file", "path": "events.jsonl"},
            "console": {"type": "stdout"},
        },
    }
    config = build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    built = {name: SINK_TYPES[sink.type].factory(sink) for name, sink in config.sinks.items()}
    assert isinstance(built["agent"], HttpSink)
    assert isinstance(built["audit"], FileSink)
    assert isinstance(built["console"], StdoutSink)
    assert {name: sink.name for name, sink in built.items()} == {
        "agent": "agent",
        "audit": "audit",
        "console": "console",
    }
    assert isinstance(config.sinks["audit"].options, FileSinkOptions)
    assert config.sinks["audit"].options.path == tmp_path / "events.jsonl"


def test_options_of_another_type_are_refused() -> None:
    config = SinkConfig(name="audit", type="file", options=StdoutSinkOptions())
    with pytest.raises(TypeError, match="sink 'audit': expected FileSinkOptions, got"):
        SINK_TYPES["file"].factory(config)
