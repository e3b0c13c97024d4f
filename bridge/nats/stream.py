"""The stream: created if missing, else validated against the config and what the bridge
publishes; its state (messages, last sequence) read for ``/status``, ``/metrics`` and
``nats-status``.

:func:`compare` is pure; :class:`StreamKeeper` runs it after every (re)connection.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from bridge.config import NatsStreamConfig
from bridge.nats import subjects
from bridge.nats.denials import Denials

log = structlog.get_logger("bridge.nats")
T = TypeVar("T")

API_PREFIX: Final = "$JS.API"
"""Where JetStream answers API requests: the bridge sets no domain and no other prefix."""


class StreamState(enum.StrEnum):
    UNKNOWN = "unknown"  # not yet checked (no connection so far)
    CREATED = "created"
    VALID = "valid"
    INVALID = "invalid"  # its subjects do not cover what the bridge publishes
    UNREACHABLE = "unreachable"  # the check itself failed (JetStream off, no permission)


class StreamWarning(NamedTuple):
    """A difference that leaves the stream usable: the log event it is reported as, and why."""

    event: str
    hint: str


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """What :func:`compare` found: errors make the stream unusable, warnings do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[StreamWarning] = field(default_factory=list)


class StreamLimits(NamedTuple):
    """How much a stream holds before it removes old messages or refuses new ones (``discard``);
    -1 or 0: no limit. The bridge creates its stream without any of these."""

    max_msgs: int = -1
    max_bytes: int = -1
    max_msgs_per_subject: int = -1
    discard_new: bool = False
    discard_new_per_subject: bool = False

    @classmethod
    def of(cls, config: StreamConfig) -> StreamLimits:
        return cls(
            max_msgs=config.max_msgs or -1,
            max_bytes=config.max_bytes or -1,
            max_msgs_per_subject=config.max_msgs_per_subject or -1,
            discard_new=config.discard is DiscardPolicy.NEW,
            discard_new_per_subject=config.discard_new_per_subject,
        )


def compare(
    config: NatsStreamConfig,
    found_subjects: Sequence[str],
    found_window: float,
    published: Sequence[str],
    *,
    found_replicas: int | None = None,
    found_max_age: float | None = None,
    found_limits: StreamLimits | None = None,
) -> StreamCheck:
    """The stream as found against the config: every subject filter in ``published`` must be
    covered by its subjects; a shorter duplicate window than configured, or (when given) fewer
    replicas, a shorter max age or a limit on what it holds, is a warning: an existing stream is
    never changed."""
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
            StreamWarning(
                "nats.stream_duplicate_window",
                f"stream {config.name} has a duplicate window of {found_window:g}s, shorter "
                "than the configured nats.stream.duplicate_window of "
                f"{config.duplicate_window:g}s: copies of one event further apart than that "
                "are both stored",
            )
        )
    # Only what loses something is worth a warning at every check: a stream replicated more, or
    # keeping messages longer, than one bridge asks for (a sidecar left at the defaults) is fine.
    if found_replicas is not None and found_replicas < config.replicas:
        check.warnings.append(
            StreamWarning(
                "nats.stream_replicas",
                f"stream {config.name} has {found_replicas} replica(s), fewer than the "
                f"configured nats.stream.replicas of {config.replicas}: it survives the loss of "
                "fewer servers; an existing stream is never changed (nats stream edit does)",
            )
        )
    if found_max_age is not None and _shorter(found_max_age, config.max_age):
        check.warnings.append(
            StreamWarning(
                "nats.stream_max_age",
                f"stream {config.name} has a max age of {_age(found_max_age)}, shorter than "
                f"the configured nats.stream.max_age of {_age(config.max_age)}: a consumer "
                "further behind than that misses messages; an existing stream is never changed "
                "(nats stream edit does)",
            )
        )
    if found_limits is not None:
        check.warnings.extend(_limit_warnings(config.name, found_limits, publishes=bool(published)))
    return check


_REMOVED: Final = (
    "then removes the oldest messages (discard old), whether or not a consumer has fetched "
    "them: a sidecar further behind than that misses them"
)
_REFUSED: Final = (
    "then refuses new ones (discard new): this bridge's publishes fail and its events wait in "
    "its spool, retried, until messages leave the stream"
)
_EDIT: Final = (
    "; the bridge sets no such limit, and never changes an existing stream (nats stream edit does)"
)


def _limit_warnings(name: str, limits: StreamLimits, *, publishes: bool) -> list[StreamWarning]:
    """A warning per limit on what the stream holds, naming it and what reaching it does. A
    limit is kept a warning, never an error: an operator may want the cap. A stream refusing
    new messages loses nothing a consumer was to get, so it is worth a warning only to a bridge
    that publishes."""
    found: list[StreamWarning] = []
    whole = (
        ("max_msgs", limits.max_msgs, f"{limits.max_msgs} messages"),
        ("max_bytes", limits.max_bytes, f"{limits.max_bytes} bytes"),
    )
    for key, value, amount in whole:
        if value > 0 and (publishes or not limits.discard_new):
            outcome = _REFUSED if limits.discard_new else _REMOVED
            found.append(
                StreamWarning(
                    f"nats.stream_{key}",
                    f"stream {name} holds at most {amount} ({key}) and {outcome}{_EDIT}",
                )
            )
    per_subject = limits.max_msgs_per_subject
    # Per subject, discard new applies only with discard_new_per_subject; else the oldest go.
    refuses = limits.discard_new and limits.discard_new_per_subject
    if per_subject > 0 and (publishes or not refuses):
        outcome = _REFUSED if refuses else _REMOVED
        found.append(
            StreamWarning(
                "nats.stream_max_msgs_per_subject",
                f"stream {name} holds at most {per_subject} messages on each subject "
                "(max_msgs_per_subject; with the default subject, an inbox's events of one type "
                f"share one) and {outcome}{_EDIT}",
            )
        )
    return found


def _shorter(found: float, configured: float) -> bool:
    """Whether a max age of ``found`` keeps messages less long than ``configured`` (0: no limit)."""
    if found <= 0:
        return False
    return configured <= 0 or found + 1e-3 < configured


def _age(seconds: float) -> str:
    return f"{seconds:g}s" if seconds > 0 else "0 (no limit)"


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
        denials: the connection's; a JetStream API request the server denies this user (a
            consume-only user may not read the stream) then fails at once, not at its timeout.
    """

    def __init__(
        self,
        config: NatsStreamConfig,
        published: Sequence[str],
        *,
        denials: Denials | None = None,
    ) -> None:
        self.config = config
        self.published = tuple(published)
        self.denials = denials
        self.state = StreamState.UNKNOWN
        self.problem: str | None = None
        self.warnings: list[str] = []

    async def ensure(self, js: JetStreamContext) -> None:
        """Create the stream if missing, else validate it; log what is wrong once per check."""
        try:
            info = await self.guarded("INFO", js.stream_info(self.config.name))
        except nats.js.errors.NotFoundError:
            info = None
        except (nats.errors.Error, TimeoutError) as exc:
            self._unusable(StreamState.UNREACHABLE, f"cannot read stream {self.config.name}: {exc}")
            return
        if info is None:
            try:
                await self.guarded("CREATE", js.add_stream(stream_config(self.config)))
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
            found_replicas=info.config.num_replicas,
            found_max_age=info.config.max_age or 0.0,
            found_limits=StreamLimits.of(info.config),
        )
        self.warnings = [warning.hint for warning in check.warnings]
        for warning in check.warnings:
            log.warning(warning.event, stream=self.config.name, hint=warning.hint)
        if check.errors:
            self._unusable(StreamState.INVALID, "; ".join(check.errors))
            return
        self.state, self.problem = StreamState.VALID, None

    async def guarded(self, request: str, call: Awaitable[T]) -> T:
        """``call``, a JetStream API ``request`` about this stream, failing at once if the server
        denies it (:class:`~bridge.nats.denials.PublishDenied`, a ``nats.errors.Error``)."""
        if self.denials is None:
            return await call
        subject = f"{API_PREFIX}.STREAM.{request}.{self.config.name}"
        return await self.denials.guard(subject, call)

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
