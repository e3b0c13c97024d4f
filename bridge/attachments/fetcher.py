"""Downloading one attachment: the API request with the key, at most one redirect without it,
retries with backoff for what a retry may mend, and the body streamed into the directory.

A status that says "no" (401, 403, 404, an over-large file, a refused redirect) is an outcome at
once; a connection error or a status that says "later" (408, 425, 429, 5xx) is tried again, at
most :data:`ATTEMPTS` times along the bridge's one backoff curve (``bridge.backoff``). The caller
bounds the whole by its ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from yarl import URL

from bridge.attachments.files import AttachmentFiles, Refused
from bridge.attachments.rules import (
    Origin,
    Outcome,
    Reason,
    Step,
    announced_too_large,
    next_step,
    redirect_url,
    request_url,
)
from bridge.backoff import Uniform, full_jitter

ATTEMPTS: Final = 4
"""Tries of one attachment whose failures a retry may mend; then it is given up."""
BACKOFF_INITIAL: Final = 0.5
BACKOFF_CAP: Final = 5.0
CHUNK: Final = 64 << 10


class _Again(Exception):
    """A failure a retry may mend; ``reason`` is the outcome if none does."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Fetcher:
    """Downloads attachments from the OpenMail API into ``files``.

    Args:
        api: the API's origin; the only one a URL may have.
        api_key: sent as ``Authorization: Bearer`` to that origin, never to a redirect's target.
        files: where the bodies are stored.
        session: the pooled session requests go through (the caller owns it).
        sleep: waits between tries; ``uniform``: the backoff's random source (tests pass theirs).
    """

    def __init__(
        self,
        api: Origin,
        api_key: str | None,
        files: AttachmentFiles,
        *,
        session: aiohttp.ClientSession,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        uniform: Uniform = random.uniform,
    ) -> None:
        self._api = api
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._files = files
        self._session = session
        self._sleep = sleep
        self._uniform = uniform

    async def fetch(self, raw_url: object, announced_size: object = None) -> Outcome:
        """The stored file of the attachment at ``raw_url`` (its ``url`` value as received), or
        the reason there is none. ``announced_size`` (``sizeBytes``) over the bound refuses it
        before any request; a smaller one is not trusted."""
        url = request_url(raw_url, self._api)
        if isinstance(url, Reason):
            return url
        if announced_too_large(announced_size, self._files.max_bytes):
            return Reason.TOO_LARGE
        try:
            self._files.check_room()
        except Refused as exc:
            return exc.reason
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Again),
            stop=stop_after_attempt(ATTEMPTS),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._try(url)
        except (_Again, Refused) as exc:
            return exc.reason
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _wait(self, state: RetryCallState) -> float:
        return full_jitter(state.attempt_number, BACKOFF_INITIAL, BACKOFF_CAP, self._uniform)

    async def _try(self, url: URL) -> Outcome:
        """One try: the API request, and the redirect's when it answers with one."""
        async with self._get(url, self._auth) as response:
            step = next_step(response.status, redirected=False)
            if step is Step.READ:
                return await self._read(response)
            if step is Step.FOLLOW:
                target = redirect_url(response.headers.get("Location"), url, self._api)
            elif step is Step.RETRY:
                raise _Again(Reason.HTTP_ERROR)
            else:
                return step
        if isinstance(target, Reason):
            return target
        async with self._get(target, {}) as response:  # never the key
            step = next_step(response.status, redirected=True)
            if step is Step.READ:
                return await self._read(response)
            if step is Step.RETRY:
                raise _Again(Reason.HTTP_ERROR)
            assert isinstance(step, Reason)  # FOLLOW is never the answer to a redirected request
            return step

    @contextlib.asynccontextmanager
    async def _get(
        self, url: URL, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``GET url`` without following redirects; a connection failure is :class:`_Again`."""
        try:
            response = await self._session.get(url, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, OSError, TimeoutError):
            raise _Again(Reason.UNREACHABLE) from None
        async with response:
            yield response

    async def _read(self, response: aiohttp.ClientResponse) -> Outcome:
        """Stream the body into a file, bounded at every chunk; Content-Length is only a reason
        to refuse early."""
        if announced_too_large(response.content_length, self._files.max_bytes):
            return Reason.TOO_LARGE
        writer = self._files.writer()
        try:
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    writer.write(chunk)
            except (aiohttp.ClientError, OSError, TimeoutError):
                raise _Again(Reason.UNREACHABLE) from None
            return await writer.keep()
        finally:
            writer.discard()
