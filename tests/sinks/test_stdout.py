"""Stdout sink: the file sink's line formats on stdout, and a clear error on a closed pipe."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bridge
from bridge.config import SinkConfig
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError
from bridge.events import Origin
from bridge.sinks.stdout import StdoutSink, StdoutSinkOptions
from bridge.store import Delivery

REPO = Path(bridge.__file__).resolve().parents[1]
PRETTY = (
    b'{\n  "event": "message.received",\n  "event_id": "evt_1",\n'
    b'  "subject": "Gr\\u00fc\\u00dfe"\n}'
)
COMPACT = '{"event":"message.received","event_id":"evt_1","subject":"Grüße"}'


def make_delivery(payload: bytes = PRETTY, *, event_id: str = "evt_1") -> Delivery:
    return Delivery(
        id=1,
        seq=1,
        sink="out",
        event_id=event_id,
        type="message.received",
        inbox_id="inb_1",
        thread_id=None,
        origin=Origin.WEBSOCKET,
        received_at=1771927500.012,
        payload=payload,
        attempts=0,
        last_error=None,
    )


def make_sink(line_format: str = "payload") -> StdoutSink:
    options = StdoutSinkOptions(format=line_format)  # type: ignore[arg-type]
    return StdoutSink(SinkConfig(name="out", type="stdout", options=options))


async def test_payload_lines(capsysbinary):
    sink = make_sink()
    await sink.start()
    await sink.send(make_delivery())
    await sink.send(make_delivery(b'{"event_id":"evt_2"}', event_id="evt_2"))
    await sink.close()
    assert capsysbinary.readouterr().out == (COMPACT + '\n{"event_id":"evt_2"}\n').encode()


async def test_envelope_line(capsysbinary):
    sink = make_sink("envelope")
    await sink.send(make_delivery())
    expected = (
        '{"source":"websocket","received_at":"2026-02-24T10:05:00.012Z","payload":'
        + COMPACT
        + "}\n"
    )
    assert capsysbinary.readouterr().out == expected.encode()


async def test_written_to_the_stdout_of_send_time_at_the_file_descriptor(capfdbinary):
    await make_sink().send(make_delivery())
    assert capfdbinary.readouterr().out == COMPACT.encode() + b"\n"


async def test_not_json_is_permanent(capsysbinary):
    with pytest.raises(PermanentDeliveryError):
        await make_sink().send(make_delivery(b"{oops"))
    assert capsysbinary.readouterr().out == b""


async def test_a_closed_stdout_file_is_a_clear_retryable_error(monkeypatch):
    closed = io.TextIOWrapper(io.BytesIO())
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    with pytest.raises(RetryableDeliveryError, match=r"^stdout is closed \(broken pipe\): "):
        await make_sink().send(make_delivery())


@pytest.fixture
def pipe_without_reader():
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", encoding="utf-8") as stream:
        yield stream


async def test_a_pipe_with_no_reader_is_a_clear_retryable_error(monkeypatch, pipe_without_reader):
    monkeypatch.setattr(sys, "stdout", pipe_without_reader)
    with pytest.raises(RetryableDeliveryError, match=r"^stdout is closed \(broken pipe\): "):
        await make_sink().send(make_delivery())


SCRIPT = """
import asyncio, sys
from bridge.config import SinkConfig
from bridge.errors import RetryableDeliveryError
from bridge.events import Origin
from bridge.sinks.stdout import StdoutSink, StdoutSinkOptions
from bridge.store import Delivery

def delivery(payload, event_id):
    return Delivery(id=1, seq=1, sink="out", event_id=event_id, type="message.received",
                    inbox_id=None, thread_id=None, origin=Origin.WEBHOOK, received_at=0.0,
                    payload=payload, attempts=0, last_error=None)

async def main():
    sink = StdoutSink(SinkConfig(name="out", type="stdout",
                                 options=StdoutSinkOptions(format=sys.argv[1])))
    await sink.start()
    sys.stdin.readline()  # the parent is ready (and may have closed our stdout's reader)
    try:
        await sink.send(delivery(b'{"event_id": "evt_1",\\n "n": [1, 2]}', "evt_1"))
        await sink.send(delivery('{"event_id":"evt_2","s":"\u00e9"}'.encode(), "evt_2"))
    except RetryableDeliveryError as exc:
        print(f"delivery failed: {exc}", file=sys.stderr)
        sys.exit(3)
    finally:
        await sink.close()

asyncio.run(main())
"""


def run_script(line_format: str, *, close_stdout_first: bool) -> tuple[int, bytes, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, line_format],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    if close_stdout_first:
        proc.stdout.close()
        out = b""
        _, err = proc.communicate(b"go\n", timeout=20)
    else:
        out, err = proc.communicate(b"go\n", timeout=20)
    return proc.returncode, out, err.decode()


def test_subprocess_writes_one_line_per_event():
    code, out, err = run_script("payload", close_stdout_first=False)
    assert (code, err) == (0, "")
    assert out == '{"event_id":"evt_1","n":[1,2]}\n{"event_id":"evt_2","s":"é"}\n'.encode()


def test_subprocess_envelope_lines_parse():
    code, out, _ = run_script("envelope", close_stdout_first=False)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in records] == ["webhook", "webhook"]
    assert [r["received_at"] for r in records] == ["1970-01-01T00:00:00.000Z"] * 2
    assert [r["payload"]["event_id"] for r in records] == ["evt_1", "evt_2"]


def test_subprocess_with_closed_stdout_gets_the_clear_error_not_a_traceback():
    code, _, err = run_script("payload", close_stdout_first=True)
    assert code == 3
    assert err == "delivery failed: stdout is closed (broken pipe): [Errno 32] Broken pipe\n"
