"""Prometheus metrics, named per the component spec in ``docs/components.md``.

Each bridge owns a ``Metrics`` with its own registry, so several bridges (tests, the demo) can live
in one process. Gauges that mirror state (spool bytes, pending rows) are set just before a scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

PREFIX = "openmail_bridge"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   300, 3600)  # fmt: skip


class GaugeOnceSet(Gauge):
    """A label-less gauge that is exported only once something set it. A plain one is exported
    as 0 from the start, which reads as a measured, healthy value on a bridge that has no part
    to measure (the consumer gauges on an edge)."""

    _was_set = False

    def set(self, value: float) -> None:
        super().set(value)
        self._was_set = True

    def collect(self) -> Iterable[Metric]:
        return super().collect() if self._was_set else []


class BatchHistogram(Histogram):
    """A histogram that also takes a batch of observations at once.

    ``observe`` takes a lock twice per value (the sum and its bucket); a sink worker records
    hundreds of deliveries at a time, and ``observe_many`` takes each lock once per batch: the
    same buckets and count for a fraction of the cost, and the same sum but for floating-point
    rounding (the batch is summed before it is added). It writes the fields the library's
    ``observe`` writes (``_upper_bounds``, ``_buckets``, ``_sum``); the tests compare both.
    """

    def observe_many(self, amounts: Sequence[float]) -> None:
        """``observe(a)`` for each of ``amounts``, in one update per bucket."""
        if not amounts:
            return
        bounds = self._upper_bounds
        counts = [0] * len(bounds)
        for amount in amounts:
            # The first bound >= amount: the bucket observe() counts it in (the last is +Inf).
            counts[bisect_left(bounds, amount)] += 1
        self._sum.inc(sum(amounts))
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class Metrics:
    """Every metric the bridge exports. Label values are fixed words, sink names and reasons."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter, gauge = self._counter, self._gauge
        self.events_received = counter(
            "events_received", "Events accepted into the spool", "source"
        )
        self.events_duplicate = counter(
            "events_duplicate", "Events dropped as duplicates", "source"
        )
        self.events_conflict = counter(
            "events_conflict",
            "Events whose id was known with other content or another inbox, quarantined",
            "source",
        )
        self.events_unrouted = counter(
            "events_unrouted", "Accepted events that no route matched", "source"
        )
        self.events_guarded = counter(
            "events_guarded",
            "Events a route's loop and auto-reply guard kept from its agents",
            "route",
            "reason",
        )
        self.events_limited = counter(
            "events_limited",
            "Events over a route's rate limit, by what was done",
            "route",
            "limit",
            "action",
        )
        self.webhook_rejected = counter(
            "webhook_rejected", "Webhook requests and connections rejected", "reason"
        )
        self.ws_connected = gauge("websocket_connected", "1 while the WebSocket is subscribed")
        self.ws_enabled = gauge(
            "websocket_enabled", "1 while the WebSocket source runs (openmail.websocket.enabled)"
        )
        self.ws_reconnects = counter(
            "websocket_reconnects", "WebSocket connection attempts after the first"
        )
        self.ws_frames_invalid = counter("websocket_frames_invalid", "Frames ignored", "reason")
        self.possible_gaps = counter(
            "possible_gaps",
            "Times events may have been missed on the WebSocket path, by reason",
            "reason",
        )
        self.spool_bytes = gauge("spool_bytes", "Payload bytes held in the spool")
        self.disk_free_bytes = gauge("disk_free_bytes", "Free bytes on the state filesystem")
        self.store_writable = gauge("store_writable", "1 while the store accepts writes")
        self.store_corrupt_files = gauge(
            "store_corrupt_files",
            "Corrupt state databases moved aside beside the state, until an operator removes them",
        )
        self.deliveries = counter(
            "deliveries", "Delivery attempts by outcome (delivered, retry, dead)", "sink", "outcome"
        )
        self.delivery_latency = BatchHistogram(
            f"{PREFIX}_delivery_latency_seconds",
            "Time from receipt to successful delivery",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pending = gauge("pending", "Deliveries waiting, per sink", "sink")
        self.dead_letters = gauge("dead_letters", "Deliveries in the dead-letter table", "sink")
        self.oldest_pending_age = gauge(
            "oldest_pending_age_seconds",
            "Age of the oldest delivery waiting, per sink (0 when none waits)",
            "sink",
        )
        self.config_reloads = counter("config_reloads", "Config reloads by result", "result")
        self.nats_connected = gauge("nats_connected", "1 while the NATS connection is usable")
        self.nats_reconnects = counter("nats_reconnects", "NATS reconnections after the first")
        self.nats_publishes = counter(
            "nats_publishes",
            "JetStream publishes by outcome (acked, duplicate, failed)",
            "sink",
            "outcome",
        )
        self.nats_stream_messages = gauge("nats_stream_messages", "Messages in the stream")
        self.nats_stream_last_seq = gauge(
            "nats_stream_last_sequence", "The stream's last sequence number"
        )
        # Only a bridge with a consumer sets these: an edge must not report a healthy 0.
        self.nats_consumer_pending = self._gauge_once_set(
            "nats_consumer_pending", "Stream messages the consumer has not yet been given"
        )
        self.nats_consumer_ack_pending = self._gauge_once_set(
            "nats_consumer_ack_pending", "Messages given to the consumer and not yet acked"
        )
        self.nats_consumer_redelivered = self._gauge_once_set(
            "nats_consumer_redelivered", "Messages the server is redelivering to the consumer"
        )
        self.nats_consumed = counter(
            "nats_consumed",
            "Messages taken from the stream by outcome (acked, terminated, unacked)",
            "outcome",
        )
        self.nats_poison = counter(
            "nats_poison", "Messages terminated as unusable, by reason", "reason"
        )
        self.nats_skipped = counter(
            "nats_skipped",
            "Messages the stream removed (its limits, a purge) before the consumer was given them",
        )
        self.nats_delivered_elsewhere = counter(
            "nats_delivered_elsewhere",
            "Deliveries of this bridge's durable consumer that went to another client",
        )

    def set_queues(self, queues: Mapping[str, tuple[int, int, float]]) -> None:
        """Set the per-sink queue gauges from (pending, dead, oldest pending age) of each sink.

        The gauges are cleared first: a sink left out (removed, drained) drops out rather than
        keep its last value.
        """
        gauges = (self.pending, self.dead_letters, self.oldest_pending_age)
        for gauge in gauges:
            gauge.clear()
        for name, values in sorted(queues.items()):
            for gauge, value in zip(gauges, values, strict=True):
                gauge.labels(name).set(value)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(f"{PREFIX}_{name}", documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", documentation, labels, registry=self.registry)

    def _gauge_once_set(self, name: str, documentation: str) -> GaugeOnceSet:
        return GaugeOnceSet(f"{PREFIX}_{name}", documentation, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
