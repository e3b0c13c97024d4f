"""``/api/stream`` refuses filters no record can ever match: a source the activity feed never
names, a sink the bridge does not run (one a reload added is known at once). A stream that could
only stay silent would look like a quiet bridge, for good."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from conftest import bridge_config_dict, running_bridge, write_config

from bridge import trigger
from bridge.activity import SOURCES
from bridge.config import load_config
from bridge.events import Origin
from bridge.sinks import SINK_TYPES
from bridge.sources import nats

ROUTE_ALL = [{"name": "all", "sinks": ["audit"]}]


def test_the_sources_are_every_transport_a_record_can_name() -> None:
    assert set(SOURCES) == {*(str(o) for o in Origin), nats.VIA, trigger.VIA}
    assert len(SOURCES) == len(set(SOURCES))


async def get(url: str) -> tuple[int, str, object]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        if response.content_type == "application/json":
            return response.status, response.content_type, await response.json()
        return response.status, response.content_type, await response.content.readline()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "sink=nope",
            {"error": "unknown sink 'nope' (sinks: audit)", "sinks": ["audit"]},
        ),
        (
            "source=bogus&sink=audit",
            {
                "error": "unknown source 'bogus' (sources: websocket, webhook, nats, test)",
                "sources": ["websocket", "webhook", "nats", "test"],
            },
        ),
    ],
)
async def test_an_unknown_sink_or_source_is_a_400_naming_the_known_ones(
    tmp_path: Path, query: str, expected: dict[str, object]
) -> None:
    path = write_config(tmp_path / "config.yaml", bridge_config_dict(tmp_path, routes=ROUTE_ALL))
    async with running_bridge(load_config(path, sink_types=SINK_TYPES)) as sv:
        assert sv.admin is not None
        base = f"http://127.0.0.1:{sv.admin.port}/api/stream"
        assert await get(f"{base}?{query}") == (400, "application/json", expected)
        assert sv.activity.subscribers == 0
        # Known values open the stream.
        status, kind, first = await get(f"{base}?sink=audit&source=test")
        assert (status, kind, first) == (200, "text/event-stream", b": stream open\n")


async def test_a_sink_added_by_a_reload_is_known_at_once(tmp_path: Path) -> None:
    data = bridge_config_dict(tmp_path, routes=ROUTE_ALL)
    path = write_config(tmp_path / "config.yaml", data)
    async with running_bridge(load_config(path, sink_types=SINK_TYPES)) as sv:
        assert sv.admin is not None
        url = f"http://127.0.0.1:{sv.admin.port}/api/stream?sink=later"
        assert (await get(url))[0] == 400
        data["sinks"]["later"] = {"type": "file", "path": str(tmp_path / "later.jsonl")}
        write_config(path, data)
        assert await sv.reload()
        assert (await get(url))[:2] == (200, "text/event-stream")
