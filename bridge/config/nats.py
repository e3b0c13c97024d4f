"""The ``nats:`` section: the JetStream connection the NATS sink and the NATS source share, the
stream it publishes to, the durable consumer a sidecar pulls from, and the rules across its keys.

Secrets (``token``, ``password``) are read as elsewhere (``${VAR}``, ``token_file``); ``creds_file``
and ``nkey_seed_file`` are paths the client reads, never their contents here.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Final, Protocol, runtime_checkable

from bridge.config.values import Bounds, Duration, FilePath, Positive, Secret
from bridge.config.walker import INVALID, Walker
from bridge.nats import subjects

SCHEMES: Final = ("nats", "tls", "ws", "wss")
MIN_DUPLICATE_WINDOW: Final = 120.0
"""Below this, two edges' copies of one event (skewed by a reconnect replay or a webhook retry)
may land outside one window and both be stored: ``check`` warns."""
_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
"""Stream and consumer names: no dots, wildcards or spaces (they become API subjects)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsTlsConfig:
    ca: FilePath | None = None
    cert: FilePath | None = None
    key: FilePath | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsStreamConfig:
    name: str = "OPENMAIL"
    subjects: tuple[str, ...] = ("openmail.>",)
    duplicate_window: Duration = 600.0
    """Must cover the longest skew between edges publishing the same event."""
    replicas: Annotated[int, Bounds(1, 5)] = 1
    max_age: Duration = 7 * 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConsumeConfig:
    consumer: str
    filter_subjects: tuple[str, ...] = ()
    ack_wait: Duration = 30.0
    max_ack_pending: Positive = 1000
    batch: Positive = 100
    """Messages fetched at once, committed to the spool in one transaction."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    token: Secret | None = None
    user: str | None = None
    password: Secret | None = None
    creds_file: FilePath | None = None
    nkey_seed_file: FilePath | None = None
    tls: NatsTlsConfig | None = None
    name: str = "openmail-bridge"
    """The client name the server shows in its connection list."""
    connect_timeout: Duration = 5.0
    reconnect_wait: Duration = 2.0
    """Between attempts to reach a server, at start and after an outage."""
    ping_interval: Duration = 20.0
    """Between pings to the server; a connection leaving three of them unanswered is given up
    for the next server (a silent partition closes nothing)."""
    stream: NatsStreamConfig = field(default_factory=NatsStreamConfig)
    consume: NatsConsumeConfig | None = None
    webhook_max_body: int | None = field(default=None, compare=False, metadata={"internal": True})
    """``openmail.webhook.max_body`` while the webhook listens, bound by the loader: compared,
    once connected, with what the server takes in one message. Not compared: a SIGHUP changing
    it changes nothing that needs a restart."""


@runtime_checkable
class NatsPublishing(Protocol):
    """Sink options that publish to NATS: the loader checks the stream covers their subjects."""

    def subject_filter(self) -> str:
        """The subject filter every subject this sink publishes matches."""
        ...


def load_nats(walker: Walker, raw: object) -> object:
    """The ``nats:`` section, or INVALID after a problem (all of them recorded)."""
    section = walker.section("nats", raw, NatsConfig)
    if not isinstance(section, NatsConfig):
        return INVALID
    before = len(walker.problems)
    for key, message in _problems(section):
        walker.fail(f"nats.{key}", message)
    return section if len(walker.problems) == before else INVALID


def _problems(nats: NatsConfig) -> Iterable[tuple[str, str]]:
    if not nats.servers:
        yield "servers", "names no server"
    for i, server in enumerate(nats.servers):
        problem = _server_problem(server)
        if problem:
            yield f"servers[{i}]", problem
    methods = [
        key
        for key, given in (
            ("token", nats.token),
            ("user", nats.user or nats.password),
            ("creds_file", nats.creds_file),
            ("nkey_seed_file", nats.nkey_seed_file),
        )
        if given
    ]
    if len(methods) > 1:
        yield methods[1], f"give one way to authenticate, not {' and '.join(methods)}"
    if (nats.user is None) != (nats.password is None):
        yield ("password" if nats.user else "user"), "user and password go together"
    for key in ("creds_file", "nkey_seed_file"):
        path = getattr(nats, key)
        if path is not None and not path.is_file():
            yield key, f"{path} is not a readable file"
    if nats.tls is not None:
        if (nats.tls.cert is None) != (nats.tls.key is None):
            yield "tls", "cert and key go together"
        for key in ("ca", "cert", "key"):
            path = getattr(nats.tls, key)
            if path is not None and not path.is_file():
                yield f"tls.{key}", f"{path} is not a readable file"
    for key in ("connect_timeout", "reconnect_wait", "ping_interval"):
        if getattr(nats, key) <= 0:
            yield key, "must be more than 0s"
    yield from _stream_problems(nats.stream)
    if nats.consume is not None:
        yield from _consume_problems(nats.consume, nats.stream)


def _server_problem(server: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(server)
        _ = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError:
        return "not a server URL such as nats://host:4222"
    if parts.scheme not in SCHEMES or not parts.hostname:
        return f"not a server URL such as nats://host:4222 (schemes: {', '.join(SCHEMES)})"
    return None


def _name_and_subjects(
    name_key: str, name: str, subjects_key: str, given: tuple[str, ...]
) -> Iterable[tuple[str, str]]:
    if not _NAME.fullmatch(name):
        yield name_key, "may use letters, digits, '_' and '-' only"
    for i, subject in enumerate(given):
        if not subjects.is_subject(subject):
            yield f"{subjects_key}[{i}]", f"{subject!r} is not a NATS subject"


def _stream_problems(stream: NatsStreamConfig) -> Iterable[tuple[str, str]]:
    yield from _name_and_subjects("stream.name", stream.name, "stream.subjects", stream.subjects)
    if not stream.subjects:
        yield "stream.subjects", "names no subject"
    if stream.duplicate_window <= 0:
        yield "stream.duplicate_window", "must be more than 0s"
    if stream.max_age and stream.duplicate_window > stream.max_age:
        yield "stream.duplicate_window", "must not be longer than stream.max_age"


def _consume_problems(
    consume: NatsConsumeConfig, stream: NatsStreamConfig
) -> Iterable[tuple[str, str]]:
    yield from _name_and_subjects(
        "consume.consumer", consume.consumer, "consume.filter_subjects", consume.filter_subjects
    )
    if consume.ack_wait <= 0:
        yield "consume.ack_wait", "must be more than 0s"
    # The server takes such a filter, and the consumer is bound and idle for good: no message
    # the stream holds can match it. Stream subjects that are missing or not subjects are
    # reported on their own, and say nothing of what a filter should match.
    taken = stream.subjects
    if not taken or not all(subjects.is_subject(s) for s in taken):
        return
    for i, wanted in enumerate(consume.filter_subjects):
        if subjects.is_subject(wanted) and not any(subjects.overlaps(s, wanted) for s in taken):
            yield (
                f"consume.filter_subjects[{i}]",
                f"{wanted!r} matches no subject of nats.stream.subjects ({', '.join(taken)}): "
                "the consumer would receive nothing",
            )


def publish_problems(
    nats: NatsConfig | None, sink: str, options: NatsPublishing
) -> Iterable[tuple[str, str]]:
    """A sink publishing to NATS: its key path and problem, if the config cannot serve it."""
    if nats is None:
        yield f"sinks.{sink}", "a sink of type nats needs the top-level nats: section"
        return
    wanted = options.subject_filter()
    if not subjects.covered_by(nats.stream.subjects, wanted):
        covering = ", ".join(nats.stream.subjects)
        yield (
            f"sinks.{sink}.subject",
            f"publishes to {wanted}, which nats.stream.subjects ({covering}) does not cover",
        )


def duplicate_window_short(nats: NatsConfig) -> str | None:
    """The warning ``check`` prints for a duplicate window under two minutes, if it is."""
    window = nats.stream.duplicate_window
    if window >= MIN_DUPLICATE_WINDOW:
        return None
    return (
        f"is {window:g}s, under {MIN_DUPLICATE_WINDOW:g}s: copies of one event that edges "
        "publish further apart than this are both stored"
    )


def dedup_window_short(nats: NatsConfig, dedup_window: float) -> str | None:
    """The warning ``check`` prints for a consuming bridge that forgets event ids sooner than
    the stream forgets events, if it does: a consumer the bridge creates starts at the
    beginning of the stream, and an event delivered longer ago than the window is new to it."""
    if nats.consume is None:
        return None
    max_age = nats.stream.max_age
    if max_age and dedup_window >= max_age:
        return None
    kept = _duration(max_age) if max_age else "0, no age limit"
    return (
        f"({_duration(dedup_window)}) is shorter than nats.stream.max_age ({kept}): a consumer "
        "the bridge creates (a new nats.consume.consumer, or one deleted and made again) replays "
        "the whole stream, and an event delivered longer ago than state.dedup_window is "
        "delivered again"
    )


def _duration(seconds: float) -> str:
    """``seconds`` in the largest unit the config accepts that divides it: 604800 -> ``7d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
