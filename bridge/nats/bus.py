"""The NATS parts of one bridge, built from the ``nats:`` section: the shared connection, the
stream it checks after every connection (and while connected, when it looks changed), the NATS
sinks bound to both, and the consumer source when ``nats.consume`` is set. What readiness,
``/status`` and ``/metrics`` show of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

import structlog
from nats.js import JetStreamContext

from bridge.config import NatsConfig, NatsPublishing, SinkConfig
from bridge.metrics import Metrics
from bridge.nats.connection import NatsConnection
from bridge.nats.stream import StreamKeeper
from bridge.sinks import Sink
from bridge.sinks.nats import NatsSink
from bridge.sources import Spool
from bridge.sources.nats import INVALID_STATE, NatsSource

log = structlog.get_logger("bridge.nats")

REFRESH_WAIT: Final = 1.0
"""Seconds ``/status`` and ``/metrics`` wait for a read of the stream and consumer: a server
that does not answer (stopped, partitioned) takes nats-py's request timeouts, and the admin
server's answer must not; the read goes on, and what was read before stands meanwhile."""


class NatsBus:
    """Args:
    config: the ``nats:`` section.
    metrics: the bridge's metrics.
    sinks: the configured sinks; those publishing to NATS say which subjects the stream must
        cover.
    """

    def __init__(
        self, config: NatsConfig, metrics: Metrics, sinks: Iterable[SinkConfig[object]]
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.connection = NatsConnection(config, metrics)
        published = [
            sink.options.subject_filter()
            for sink in sinks
            if isinstance(sink.options, NatsPublishing)
        ]
        self.stream = StreamKeeper(
            config.stream,
            published,
            denials=self.connection.denials,
            jetstream=self.connection.jetstream,
        )
        self.connection.on_connect(self.stream.ensure)
        self._max_payload_seen: int | None = None
        if published and config.webhook_max_body is not None:
            self.connection.on_connect(self._check_max_payload)
        self.source = NatsSource(config, self.connection, metrics) if config.consume else None
        self.sinks: dict[str, NatsSink] = {}
        self._reading: asyncio.Task[None] | None = None

    def bind(self, sink: Sink) -> None:
        """Give a NATS sink the connection; any other sink is left alone."""
        if isinstance(sink, NatsSink):
            sink.bind(self.connection, self.stream, self.metrics)
            self.sinks[sink.name] = sink

    async def start(self) -> None:
        """Start connecting (in the background: a server that is down does not stop the
        bridge)."""
        await self.connection.start()

    async def start_source(self, spool: Spool) -> None:
        if self.source is not None:
            await self.source.start(spool)

    async def stop_source(self) -> None:
        if self.source is not None:
            await self.source.stop()

    async def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        await self.stream.stop()
        await self.connection.stop()

    async def refresh(self, within: float = REFRESH_WAIT) -> None:
        """Read the stream's and the consumer's state and set their gauges, waiting ``within``
        seconds at most (one read at a time: a later call waits for the one running)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read(), name="nats-read")
            self._reading.add_done_callback(_log_failure)
        await asyncio.wait([self._reading], timeout=within)

    async def _read(self) -> None:
        await self.stream.read()
        info = self.stream.info  # a stream gone shows no counts: its gauges go to 0
        self.metrics.nats_stream_messages.set(info.state.messages if info is not None else 0)
        self.metrics.nats_stream_last_seq.set(info.state.last_seq if info is not None else 0)
        if self.source is not None:
            await self.source.refresh()

    async def _check_max_payload(self, _: JetStreamContext) -> None:
        """Warn once per server limit when a webhook may accept an event larger than the
        server takes in one message: the NATS sinks dead-letter such an event."""
        limit, max_body = self.connection.max_payload, self.config.webhook_max_body
        if limit is None or max_body is None or limit == self._max_payload_seen:
            return
        self._max_payload_seen = limit
        if max_body > limit:
            log.warning(
                "nats.max_payload_below_max_body",
                server=self.connection.server,
                max_payload=limit,
                max_body=max_body,
                hint=(
                    f"openmail.webhook.max_body is {max_body} bytes, but this NATS server takes "
                    f"at most {limit} bytes per message (headers included): a larger webhook "
                    "event is dead-lettered by the NATS sinks; raise max_payload on the server "
                    "or lower max_body"
                ),
            )

    @property
    def state(self) -> str:
        """What readiness shows: the connection's state, or that its consumer is unusable."""
        if self.source is not None and self.source.consumer_invalid:
            return INVALID_STATE
        return self.connection.state.value

    def status(self) -> dict[str, object]:
        return {
            "connection": self.connection.status(),
            "stream": self.stream.status(),
            "publishes": {name: sink.status() for name, sink in sorted(self.sinks.items())},
            "consumer": self.source.status() if self.source is not None else None,
        }


def _log_failure(task: asyncio.Task[None]) -> None:
    """A read that failed otherwise than the stream's own reads expect (a bug): said, since no
    caller waits for its outcome."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("nats.read_failed", error=f"{type(exc).__name__}: {exc}")
