"""One HTTP sink's attachments: fetched when it sends a ``message.received`` event, stored in its
directory, named in the payload it sends; and the directory kept within its retention.

A delivery waits for its event's attachments at most ``timeout``; whatever is not stored by then
goes with ``reason: timeout``, so an attachment never holds an event back for long, and never
dead-letters it. What one download found out for good (stored, or refused with 401, 403, 404, an
over-large file or a refused redirect) is remembered per URL, so a delivery tried again does not
download or ask again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import aiohttp
import structlog

from bridge import protocol
from bridge.attachments import payload
from bridge.attachments.fetcher import Fetcher
from bridge.attachments.files import EVICT_AFTER, AttachmentFiles
from bridge.attachments.rules import Origin, Outcome, Reason, Stored
from bridge.attachments.settings import AttachmentsConfig
from bridge.backoff import Uniform

if TYPE_CHECKING:
    from bridge.store import Delivery

log = structlog.get_logger("bridge.attachments")
P = ParamSpec("P")
T = TypeVar("T")

PARALLEL: Final = 4
"""Downloads of one sink at once; more attachments wait their turn (within ``timeout``)."""
REMEMBERED: Final = 4096
"""URLs whose outcome is kept; the least recently used are forgotten first."""
FINAL: Final = frozenset(
    {Reason.UNAUTHORIZED, Reason.NOT_FOUND, Reason.TOO_LARGE, Reason.REDIRECT_REFUSED}
)
"""Reasons another try would not change: remembered like a stored file."""
OFFLOAD_ABOVE: Final = 64 << 10
"""Payloads larger than this are read and written again on a worker thread, so that a large
event never blocks the event loop."""
SWEEP_EVERY: Final = 3600.0
"""How often old files are looked for, at most (more often for a short ``retention``)."""


class AttachmentService:
    """Attachments of the events one HTTP sink sends.

    Args:
        sink: the sink's name, for logs.
        config: its ``attachments`` option, bound to the API and the state directory.
        user_agent: sent with every request.
        session: a session to use instead of one of its own; the service never closes it.
        clock: Unix time, for file ages. ``sleep`` waits between tries of a download,
        ``uniform`` is the backoff's random source, ``pause`` waits between sweeps.
    """

    def __init__(
        self,
        sink: str,
        config: AttachmentsConfig,
        *,
        user_agent: str,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Uniform = random.uniform,
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if config.dir is None:
            raise ValueError("attachments: dir is not bound (load the config with the loader)")
        self.name = sink
        self.config = config
        self.files = AttachmentFiles(
            config.dir,
            max_bytes=config.max_bytes,
            max_total=config.max_total,
            min_free=config.min_free,
            evict_after=min(EVICT_AFTER, config.retention),
            clock=clock,
        )
        self._api = Origin.parse(config.api_url)
        self._user_agent = user_agent
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._uniform = uniform
        self._pause = pause
        self._fetcher: Fetcher | None = None
        self._known: collections.OrderedDict[str, Outcome] = collections.OrderedDict()
        self._parallel = asyncio.Semaphore(PARALLEL)
        self._sweeper: asyncio.Task[None] | None = None
        self._dir_problem: str | None = None
        self._log = log.bind(sink=sink)

    async def start(self) -> None:
        """Open the directory and start the retention sweep. A directory that cannot be made is
        logged, not raised: the sink still delivers (``reason: write_failed``) and ingest goes on;
        each event tries the directory again."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.config.timeout, sock_read=self.config.timeout
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": self._user_agent},
            )
        key = self.config.api_key.get() if self.config.api_key is not None else None
        self._fetcher = Fetcher(
            self._api,
            key,
            self.files,
            session=self._session,
            sleep=self._sleep,
            uniform=self._uniform,
        )
        await self._open()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"attachments-{self.name}")

    async def close(self) -> None:
        """Stop the sweep; close the session if the service made it."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def payload(self, delivery: Delivery) -> bytes:
        """What the sink sends for ``delivery``: the payload as received, or, for a
        ``message.received`` event with attachments, the payload naming each one's file or
        reason. Returns within ``timeout`` (plus the time to write the JSON)."""
        if delivery.type != protocol.MESSAGE_RECEIVED:
            return delivery.payload
        listing = await _off_loop(len(delivery.payload), payload.read, delivery.payload)
        if listing is None:
            return delivery.payload
        if isinstance(listing, payload.Malformed):
            self._log.warning(
                "attachments.malformed",
                event_id=delivery.event_id,
                reason=listing.value,
                hint="the event is sent as received, without local files",
            )
            return delivery.payload
        if listing.skipped:
            self._log.warning(
                "attachments.malformed",
                event_id=delivery.event_id,
                reason="attachment_not_an_object",
                count=listing.skipped,
                hint="those entries are sent as received",
            )
        outcomes = await self._fetch_all([item for _, item in listing.items])
        self._report(delivery.event_id, outcomes)
        try:
            return await _off_loop(len(delivery.payload), payload.written, listing, outcomes)
        except (ValueError, RecursionError) as exc:
            # Read but not writable back as JSON (a number too large for a float, stored by an
            # earlier release): retrying cannot change that, and an event never waits on its
            # attachments.
            self._log.warning(
                "attachments.malformed",
                event_id=delivery.event_id,
                reason="not_rewritable",
                error=str(exc)[:200],
                hint="the event is sent as received, without local files",
            )
            return delivery.payload

    async def _fetch_all(self, items: Sequence[dict[str, object]]) -> list[Outcome]:
        if not self.files.ready:
            await self._open()
        tasks = [asyncio.ensure_future(self._fetch(item)) for item in items]
        try:
            await asyncio.wait(tasks, timeout=self.config.timeout)
        finally:
            for task in tasks:
                task.cancel()
            # The cancelled ones remove their temporary files before the event goes.
            await asyncio.gather(*tasks, return_exceptions=True)
        return [
            task.result() if task.done() and not task.cancelled() else Reason.TIMEOUT
            for task in tasks
        ]

    async def _fetch(self, item: dict[str, object]) -> Outcome:
        url = item.get("url")
        known = self._recall(url)
        if known is not None:
            return known
        assert self._fetcher is not None, "the service is not started"
        try:
            async with self._parallel:
                await self._make_room()
                outcome = await self._fetcher.fetch(url, item.get("sizeBytes"))
        except Exception:
            # Whatever went wrong, the event is still sent: an attachment never holds it back.
            self._log.exception("attachments.fetch_error")
            return Reason.FAILED
        if isinstance(url, str) and (isinstance(outcome, Stored) or outcome in FINAL):
            self._known[url] = outcome
            if len(self._known) > REMEMBERED:
                self._known.popitem(last=False)
        return outcome

    async def _make_room(self) -> None:
        """Room for one file of ``max_bytes`` (its real size is known only once it is read)."""
        try:
            removed, freed = await self.files.make_room(self.files.max_bytes)
        except OSError as exc:
            self._log.warning("attachments.sweep_failed", error=exc.strerror or str(exc))
            return
        if removed:
            self._log.info(
                "attachments.evicted",
                count=removed,
                bytes=freed,
                dir=str(self.files.directory),
                hint="the directory was full: files not needed lately went first",
            )

    def _recall(self, url: object) -> Outcome | None:
        if not isinstance(url, str) or (known := self._known.get(url)) is None:
            return None
        if isinstance(known, Stored):
            # Removed since (retention): fetched again.
            known = self.files.existing(known.sha256)
            if known is None:
                del self._known[url]
                return None
        self._known.move_to_end(url)
        return known

    def _report(self, event_id: str, outcomes: Sequence[Outcome]) -> None:
        stored = sum(isinstance(o, Stored) for o in outcomes)
        reasons = collections.Counter(o.value for o in outcomes if isinstance(o, Reason))
        if reasons:
            self._log.warning(
                "attachments.not_stored",
                event_id=event_id,
                stored=stored,
                reasons=dict(reasons),
                hint="the event is sent with a reason for each of those attachments",
            )
        else:
            self._log.debug("attachments.stored", event_id=event_id, stored=stored)

    async def _open(self) -> None:
        """Open the directory; logged once when it becomes unusable, once when it is back."""
        try:
            await self.files.open()
        except OSError as exc:
            problem = exc.strerror or str(exc)
            if problem != self._dir_problem:
                self._log.error(
                    "attachments.dir_unusable",
                    dir=str(self.files.directory),
                    error=problem,
                    hint="events are sent with reason write_failed until it can be made",
                )
            self._dir_problem = problem
            return
        if self._dir_problem is not None:
            self._log.info("attachments.dir_usable", dir=str(self.files.directory))
            self._dir_problem = None

    async def _sweep_forever(self) -> None:
        interval = min(max(self.config.retention / 10, 1.0), SWEEP_EVERY)
        while True:
            await self.sweep()
            await self._pause(interval)

    async def sweep(self) -> int:
        """Remove the files older than ``retention``; returns how many went."""
        try:
            removed = await self.files.sweep(self.config.retention)
        except OSError as exc:
            self._log.warning("attachments.sweep_failed", error=exc.strerror or str(exc))
            return 0
        if removed:
            self._log.info("attachments.removed", count=removed, dir=str(self.files.directory))
        return removed


async def _off_loop(size: int, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args)``, on a worker thread when the payload is larger than ``OFFLOAD_ABOVE``."""
    if size > OFFLOAD_ABOVE:
        return await asyncio.to_thread(function, *args, **kwargs)
    return function(*args, **kwargs)
