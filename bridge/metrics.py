"""Prometheus metrics, named per the component spec in ``docs/components.md``.

Each bridge owns a ``Metrics`` with its own registry, so several bridges (tests, the demo) can live
in one process. Gauges that mirror state (spool bytes, pending rows) are set just before a scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "openmail_bridge"


class Metrics:
    """Every metric the bridge exports. Label values are fixed words, sink names and reasons."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = PREFIX
        self.events_received = Counter(
            f"{p}_events_received",
            "Events accepted into the spool, by source",
            ["source"],
            registry=r,
        )
        self.events_duplicate = Counter(
            f"{p}_events_duplicate",
            "Events dropped as duplicates, by source",
            ["source"],
            registry=r,
        )
        self.events_conflict = Counter(
            f"{p}_events_conflict",
            "Events whose id was known with other content or another inbox, quarantined, by source",
            ["source"],
            registry=r,
        )
        self.events_unrouted = Counter(
            f"{p}_events_unrouted", "Accepted events that no route matched", registry=r
        )
        self.webhook_rejected = Counter(
            f"{p}_webhook_rejected", "Webhook requests rejected, by reason", ["reason"], registry=r
        )
        self.ws_connected = Gauge(
            f"{p}_websocket_connected", "1 while the WebSocket is subscribed", registry=r
        )
        self.ws_reconnects = Counter(
            f"{p}_websocket_reconnects", "WebSocket connection attempts after the first", registry=r
        )
        self.ws_frames_invalid = Counter(
            f"{p}_websocket_frames_invalid", "Frames ignored, by reason", ["reason"], registry=r
        )
        self.possible_gaps = Counter(
            f"{p}_possible_gaps",
            "Times events may have been missed (cursor_reset, replay_limit)",
            ["reason"],
            registry=r,
        )
        self.spool_bytes = Gauge(f"{p}_spool_bytes", "Payload bytes held in the spool", registry=r)
        self.disk_free_bytes = Gauge(
            f"{p}_disk_free_bytes", "Free bytes on the state filesystem", registry=r
        )
        self.store_writable = Gauge(
            f"{p}_store_writable", "1 while the store accepts writes", registry=r
        )
        self.deliveries = Counter(
            f"{p}_deliveries",
            "Delivery attempts by sink and outcome (delivered, retry, dead)",
            ["sink", "outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            f"{p}_delivery_latency_seconds",
            "Time from receipt to successful delivery",
            ["sink"],
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
                300,
                3600,
            ),
            registry=r,
        )
        self.pending = Gauge(f"{p}_pending", "Deliveries waiting, per sink", ["sink"], registry=r)
        self.dead_letters = Gauge(
            f"{p}_dead_letters",
            "Deliveries in the dead-letter table, per sink",
            ["sink"],
            registry=r,
        )
        self.config_reloads = Counter(
            f"{p}_config_reloads", "Config reloads by result (ok, invalid)", ["result"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
