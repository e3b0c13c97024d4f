"""The stream: created if missing, else validated against the config and what the bridge
publishes; its state (messages, last sequence) read for ``/status``, ``/metrics`` and
``nats-status``.

:func:`compare` is pure; :class:`StreamKeeper` runs it after every (re)connection.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from bridge.config import NatsStreamConfig
from bridge.nats import subjects

log = structlog.get_logger("bridge.nats")


class StreamState(enum.StrEnum):
    UNKNOWN = "unknown"  # not yet checked (no connection so far)
    CREATED = "created"
    VALID = "valid"
    INVALID = "invalid"  # its subjects do not cover what the bridge publishes
    UNREACHABLE = "unreachable"  # the check itself failed (JetStream off, no permission)


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """What :func:`compare` found: errors make the stream unusable, warnings do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compare(
    config: NatsStreamConfig,
    found_subjects: Sequence[str],
    found_window: float,
    published: Sequence[str],
) -> StreamCheck:
    """The stream as found against the config: every subject filter in ``published`` must be
    covered by its subjects; a shorter duplicate window than configured is a warning."""
    check = StreamCheck()
    have = ", ".join(found_subjects) or "none"
    for wanted in published:
        if not subjects.covered_by(found_subjects, wanted):
            check.errors.append(
                f"stream {config.name} has subjects [{have}], which do not cover {wanted} "
                "that the bridge publishes to"
            )
    if found_window + 1e-3 < config.duplicate_window:
        check.warnings.append(
            f"stream {config.name} has a duplicate window of {found_window:g}s, shorter than "
            f"the configured nats.stream.duplicate_window of {config.duplicate_window:g}s: "
            "copies of one event further apart than that are both stored"
        )
    return check


def stream_config(config: NatsStreamConfig) -> StreamConfig:
    return StreamConfig(
        name=config.name,
        subjects=list(config.subjects),
        duplicate_window=config.duplicate_window,
        num_replicas=config.replicas,
        max_age=config.max_age,
        storage=StorageType.FILE,
    )


class StreamKeeper:
    """Creates or validates the stream after every connection, and keeps what it found.

    Args:
        config: ``nats.stream``.
        published: subject filters covering what this bridge's NATS sinks publish.
    """

    def __init__(self, config: NatsStreamConfig, published: Sequence[str]) -> None:
        self.config = config
        self.published = tuple(published)
        self.state = StreamState.UNKNOWN
        self.problem: str | None = None
        self.warnings: list[str] = []

    async def ensure(self, js: JetStreamContext) -> None:
        """Create the stream if missing, else validate it; log what is wrong once per check."""
        try:
            info = await js.stream_info(self.config.name)
        except nats.js.errors.NotFoundError:
            info = None
        except (nats.errors.Error, TimeoutError) as exc:
            self._unusable(StreamState.UNREACHABLE, f"cannot read stream {self.config.name}: {exc}")
            return
        if info is None:
            try:
                await js.add_stream(stream_config(self.config))
            except (nats.errors.Error, TimeoutError) as exc:
                message = f"cannot create stream {self.config.name}: {exc}"
                self._unusable(StreamState.UNREACHABLE, message)
                return
            log.info(
                "nats.stream_created",
                stream=self.config.name,
                subjects=list(self.config.subjects),
                replicas=self.config.replicas,
            )
            self.state, self.problem, self.warnings = StreamState.CREATED, None, []
            return
        check = compare(
            self.config,
            info.config.subjects or [],
            info.config.duplicate_window or 0.0,
            self.published,
        )
        self.warnings = check.warnings
        for warning in check.warnings:
            log.warning("nats.stream_duplicate_window", stream=self.config.name, hint=warning)
        if check.errors:
            self._unusable(StreamState.INVALID, "; ".join(check.errors))
            return
        self.state, self.problem = StreamState.VALID, None

    def _unusable(self, state: StreamState, problem: str) -> None:
        if (state, problem) != (self.state, self.problem):
            log.error("nats.stream_invalid", stream=self.config.name, error=problem)
        self.state, self.problem = state, problem

    def status(self) -> dict[str, object]:
        return {
            "name": self.config.name,
            "check": self.state.value,
            "problem": self.problem,
            "warnings": list(self.warnings),
        }
