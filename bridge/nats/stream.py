"""The stream: created if missing, else validated against the config and what the bridge
publishes; its state (messages, last sequence) read for ``/status``, ``/metrics`` and
``nats-status``.

:func:`compare` is pure; :class:`StreamKeeper` runs it after every (re)connection, and again
while connected when a publish fails on the stream or a read finds it unusable or gone (at most
once per :data:`RECHECK_INTERVAL`): a stream fixed, deleted or created meanwhile is followed
without a reconnection.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

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
    MISSING = "missing"  # it does not exist, and this bridge could not create it (yet)


USABLE: Final = frozenset({StreamState.CREATED, StreamState.VALID})
RECHECKED: Final = frozenset({StreamState.INVALID, StreamState.UNREACHABLE, StreamState.MISSING})
"""What a read of the stream's state checks it again in: what an operator or the server may have
put right while the bridge stays connected."""
_HINTS: Final = {
    StreamState.INVALID: (
        "change the stream's subjects (nats stream edit) or the NATS sinks' subject; the stream "
        "is checked again while connected, and publishing resumes without a restart"
    ),
    StreamState.MISSING: (
        "create the stream (nats stream add), or let this NATS user create it; it is checked "
        "again while connected"
    ),
}
"""What an operator can do about a stream this bridge cannot use."""
RECHECK_INTERVAL: Final = 1.0
"""Least seconds between two checks run between connections: a burst of publishes failing on the
stream, or of status reads while it is unusable, costs one check a second at most."""


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
            # Equal, not identical: nats-py leaves a read stream's policy as the text "new".
            discard_new=config.discard == DiscardPolicy.NEW,
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
    """Creates or validates the stream after every connection, checks it again when what the
    server does says it may have changed, and keeps what it found.

    Args:
        config: ``nats.stream``.
        published: subject filters covering what this bridge's NATS sinks publish.
        denials: the connection's; a JetStream API request the server denies this user (a
            consume-only user may not read the stream) then fails at once, not at its timeout.
        jetstream: the connection's JetStream context while it is usable, else None: what a
            check between connections runs on.
        clock, sleep: what :data:`RECHECK_INTERVAL` is measured and waited with.
    """

    def __init__(
        self,
        config: NatsStreamConfig,
        published: Sequence[str],
        *,
        denials: Denials | None = None,
        jetstream: Callable[[], JetStreamContext | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.published = tuple(published)
        self.denials = denials
        self.state = StreamState.UNKNOWN
        self.problem: str | None = None
        self.warnings: list[str] = []
        self._info: StreamInfo | None = None
        self.read_at: float | None = None
        """When (Unix time) :attr:`info` was read."""
        self.unanswered_since: float | None = None
        """When a read of the stream was asked for that has not been answered since (the server
        stopped, or the connection down): :attr:`info` is older than it looks."""
        self.recoveries = 0
        """How many times a check found the stream usable when it was not, or created it: a
        publish that failed at one count is worth retrying once the count has moved on
        (:meth:`usable_after`)."""
        self._jetstream = jetstream
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()  # one check at a time: two would both create the stream
        self._recovered = asyncio.Event()  # set and replaced each time the count moves on
        self._checked_at: float | None = None
        self._due = False
        self._rechecks: asyncio.Task[None] | None = None
        self._stopped = False

    # --- checks ------------------------------------------------------------------------------

    async def ensure(self, js: JetStreamContext) -> None:
        """The check after a connection: create the stream if missing, else validate it; log
        what is wrong, and each warning, once per connection."""
        await self._check(js, repeat_warnings=True)

    def suspect(self) -> None:
        """What the server did says the stream may have changed since it was checked (a publish
        no stream answered, a JetStream error about it, a publish held back by an invalid
        stream): check it again in the background, at once or when :data:`RECHECK_INTERVAL`
        has passed since the last check. Any number of calls in between make one check."""
        self._due = True
        if self._stopped:
            return
        if self._rechecks is None or self._rechecks.done():
            self._rechecks = asyncio.create_task(self._run_rechecks(), name="nats:stream-check")

    async def recheck(self) -> bool:
        """Check again now and wait for it, unless the last check is less than
        :data:`RECHECK_INTERVAL` old: then it is left to a check when it is (:meth:`suspect`).
        Whether it checked now."""
        js = self._jetstream()
        if js is None or self._lock.locked() or self._due_in() > 0:
            self.suspect()
            return False
        await self._check(js, repeat_warnings=False)
        return True

    @property
    def info(self) -> StreamInfo | None:
        """The stream as last read (its messages and last sequence); None while it is missing."""
        return self._info

    @info.setter
    def info(self, info: StreamInfo | None) -> None:
        self._info, self.read_at, self.unanswered_since = info, time.time(), None

    async def read(self) -> None:
        """Read the stream's state again (``/status``, ``/metrics``). A stream found unusable
        is checked again; one found gone is shown so, and checked again (created where this
        user may), at most once per :data:`RECHECK_INTERVAL`."""
        if self.unanswered_since is None:
            self.unanswered_since = time.time()  # until an answer sets info
        js = self._jetstream()
        if js is None:
            return
        if self.state in RECHECKED:
            # The check at connect can fail on a passing trouble (a cluster electing the
            # stream's leader), and an operator may fix or create the stream while connected.
            await self.recheck()
        try:
            self.info = await self.guarded("INFO", js.stream_info(self.config.name))
        except nats.js.errors.NotFoundError:
            self.info = None  # none of a deleted stream's counts is shown
            # A check that found it missing said why it could not create it: that stands.
            if self.state is not StreamState.MISSING and not await self.recheck():
                self._unusable(StreamState.MISSING, f"stream {self.config.name} does not exist")
        except (nats.errors.Error, TimeoutError):
            pass  # a passing trouble: the last counts stand until the next read

    async def stop(self) -> None:
        """End a check between connections in progress or waiting; none starts after this."""
        self._stopped = True
        if self._rechecks is not None:
            task, self._rechecks = self._rechecks, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def usable_after(self, count: int) -> None:
        """Until the stream has become usable again since :attr:`recoveries` was ``count``: at
        once if it has. A publish that failed on the stream waits on this as well as on its
        backoff, so a stream created or fixed while connected is published to at once."""
        while self.recoveries <= count:
            await self._recovered.wait()

    async def _run_rechecks(self) -> None:
        while self._due:
            if (delay := self._due_in()) > 0:
                await self._sleep(delay)
            self._due = False
            js = self._jetstream()
            if js is None:
                continue  # not connected: the check after the next connection covers it
            try:
                await self._check(js, repeat_warnings=False)
            except Exception as exc:  # a background task: nothing else would report it
                log.warning("nats.stream_check_failed", stream=self.config.name, error=str(exc))

    def _due_in(self) -> float:
        """Seconds until a check between connections may run."""
        if self._checked_at is None:
            return 0.0
        return self._checked_at + RECHECK_INTERVAL - self._clock()

    async def _check(self, js: JetStreamContext, *, repeat_warnings: bool) -> None:
        async with self._lock:
            self._checked_at = self._clock()
            was_usable = self.state in USABLE
            created = await self._create_or_validate(js, repeat_warnings=repeat_warnings)
            if self.state in USABLE and (created or not was_usable):
                self.recoveries += 1
                self._recovered.set()
                self._recovered = asyncio.Event()

    async def _create_or_validate(self, js: JetStreamContext, *, repeat_warnings: bool) -> bool:
        """The check itself; whether it created the stream."""
        try:
            info = await self.guarded("INFO", js.stream_info(self.config.name))
        except nats.js.errors.NotFoundError:
            info = None
        except (nats.errors.Error, TimeoutError) as exc:
            self._unusable(StreamState.UNREACHABLE, f"cannot read stream {self.config.name}: {exc}")
            return False
        if info is None:
            self.info = None
            try:
                info = await self.guarded("CREATE", js.add_stream(stream_config(self.config)))
            except (nats.errors.Error, TimeoutError) as exc:
                message = f"stream {self.config.name} does not exist and cannot be created: {exc}"
                self._unusable(StreamState.MISSING, message)
                return False
            log.info(
                "nats.stream_created",
                stream=self.config.name,
                subjects=list(self.config.subjects),
                replicas=self.config.replicas,
            )
            self.info = info
            self.state, self.problem, self.warnings = StreamState.CREATED, None, []
            return True
        self.info = info
        check = compare(
            self.config,
            info.config.subjects or [],
            info.config.duplicate_window or 0.0,
            self.published,
            found_replicas=info.config.num_replicas,
            found_max_age=info.config.max_age or 0.0,
            found_limits=StreamLimits.of(info.config),
        )
        hints = [warning.hint for warning in check.warnings]
        for warning in check.warnings:
            # Checks between connections run as often as the stream looks wrong: only what is
            # new since the last check is worth another line.
            if repeat_warnings or warning.hint not in self.warnings:
                log.warning(warning.event, stream=self.config.name, hint=warning.hint)
        self.warnings = hints
        if check.errors:
            self._unusable(StreamState.INVALID, "; ".join(check.errors))
            return False
        self.state, self.problem = StreamState.VALID, None
        return False

    async def guarded(self, request: str, call: Awaitable[T]) -> T:
        """``call``, a JetStream API ``request`` about this stream, failing at once if the server
        denies it (:class:`~bridge.nats.denials.PublishDenied`, a ``nats.errors.Error``)."""
        if self.denials is None:
            return await call
        subject = f"{API_PREFIX}.STREAM.{request}.{self.config.name}"
        return await self.denials.guard(subject, call)

    def _unusable(self, state: StreamState, problem: str) -> None:
        if (state, problem) != (self.state, self.problem):
            hint = {"hint": _HINTS[state]} if state in _HINTS else {}
            log.error("nats.stream_invalid", stream=self.config.name, error=problem, **hint)
        self.state, self.problem = state, problem

    def status(self) -> dict[str, object]:
        info = self.info
        return {
            "name": self.config.name,
            "check": self.state.value,
            "problem": self.problem,
            "warnings": list(self.warnings),
            "messages": info.state.messages if info is not None else None,
            "last_seq": info.state.last_seq if info is not None else None,
            "read_at": self.read_at,
            "unanswered_since": self.unanswered_since,
        }
