"""What may be fetched and what an answer means: pure rules, URLs and statuses in, verdicts out.

An attachment is fetched with the API key, so only from the OpenMail API's own origin: the URL's
parsed scheme, host and port must equal ``api_url``'s, and a URL with user-info is refused. The
URL that was checked is the very object that is requested (parsed once, with yarl, as aiohttp
parses it), so no second parser can read a different host out of the same text. One redirect is
followed (OpenMail's older answer is a 302 to a signed URL), never with the key, and only to
https, unless ``api_url`` itself is plain http (a local simulator), when http is allowed too.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from yarl import URL

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES: Final = frozenset({408, 425, 429})
"""Besides 5xx: statuses that say "later", which a retry may mend."""


class Reason(enum.StrEnum):
    """Why an attachment has no ``local_path``: the word its ``reason`` says."""

    NO_URL = "no_url"
    """``url`` is missing or not a string."""
    BAD_URL = "bad_url"
    """``url`` is not an absolute http(s) URL."""
    CREDENTIALS_IN_URL = "credentials_in_url"
    """``url`` carries user-info (``user:pass@``): refused without a request."""
    NOT_API_HOST = "not_api_host"
    """``url`` is not on the OpenMail API's scheme, host and port: refused without a request."""
    UNAUTHORIZED = "unauthorized"
    """401 or 403: the API key is not accepted (or a signed URL no longer is)."""
    NOT_FOUND = "not_found"
    """404 or 410."""
    HTTP_ERROR = "http_error"
    """Any other status, or one that asks for a retry still after the last one."""
    UNREACHABLE = "unreachable"
    """No answer: the connection failed on every try."""
    REDIRECT_REFUSED = "redirect_refused"
    """A second redirect, one to plain http (or another scheme), or one without a usable target."""
    TOO_LARGE = "too_large"
    """Over ``max_bytes``: announced so, or found so while reading."""
    STORE_FULL = "store_full"
    """The directory holds ``max_total`` already."""
    NO_SPACE = "no_space"
    """Storing it would take free disk below ``state.min_free`` plus a headroom."""
    WRITE_FAILED = "write_failed"
    """The directory cannot be written (permissions, I/O error)."""
    TIMEOUT = "timeout"
    """Not stored within ``timeout``: the event went without it."""
    FAILED = "failed"
    """An unexpected error, logged with its traceback."""


@dataclass(frozen=True, slots=True)
class Stored:
    """An attachment stored under the directory: its absolute path and content hash."""

    path: Path
    sha256: str
    size: int


Outcome = Stored | Reason


class Step(enum.Enum):
    """What to do with a response that is not a final verdict."""

    READ = "read"
    """2xx: the body is the attachment."""
    FOLLOW = "follow"
    """The first redirect: fetch its target, without the key."""
    RETRY = "retry"
    """Try again after a backoff (408, 425, 429, 5xx)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port of a URL, the port made explicit (80 / 443 when not written)."""

    scheme: str
    host: str
    port: int | None
    path: str = field(default="", compare=False)
    """The path the API is served under: ``api_url``'s, without a last ``/`` or ``/v1`` (the
    version the attachment paths name themselves)."""

    @classmethod
    def of(cls, url: URL) -> Origin:
        return cls(url.scheme.lower(), (url.raw_host or "").lower(), url.port)

    @classmethod
    def parse(cls, api_url: str) -> Origin:
        """The origin of ``api_url``, with its path. Raises ValueError: not an absolute http(s)
        URL."""
        url = URL(api_url)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) URL: {api_url!r}")
        path = url.raw_path.rstrip("/")
        return replace(cls.of(url), path=path.removesuffix("/v1"))

    def attachment_path(self, raw_path: str) -> bool:
        """Whether ``raw_path`` is one of the API's attachment paths,
        ``{path}/v1/attachments/{messageId}/{filename}`` or its ``/text``: exactly, not a path
        that only holds one (the key goes with the request)."""
        if not raw_path.startswith(self.path + "/"):
            return False
        return _ATTACHMENT_PATH.fullmatch(raw_path[len(self.path) :]) is not None

    @property
    def redirect_schemes(self) -> frozenset[str]:
        """Where a redirect may lead: https, and http only when the API itself is http."""
        return frozenset({"https", "http"} if self.scheme == "http" else {"https"})


_ATTACHMENT_PATH: Final = re.compile(r"/v1/attachments/[^/]+/[^/]+(?:/text)?")
"""Where OpenMail serves attachments, under the API's own path:
``/v1/attachments/{messageId}/{filename}`` and its ``/text``."""
_PATH_SEPARATORS: Final = re.compile(r"[/\\]")


def request_url(raw: object, api: Origin) -> URL | Reason:
    """The URL to request for an attachment's ``url`` value, or why none may be requested."""
    if not isinstance(raw, str) or not raw:
        return Reason.NO_URL
    try:
        url = URL(raw)
    except (ValueError, TypeError):
        return Reason.BAD_URL
    if not url.absolute or url.scheme not in ("http", "https") or not url.raw_host:
        return Reason.BAD_URL
    if url.raw_user is not None or url.raw_password is not None:
        return Reason.CREDENTIALS_IN_URL
    if Origin.of(url) != api:
        return Reason.NOT_API_HOST
    if not api.attachment_path(url.raw_path) or any(
        part in (".", "..")
        for segment in url.raw_path.split("/")
        for part in _PATH_SEPARATORS.split(unquote(segment))
    ):
        # The key goes with this request: a filename with dot segments (``../../inboxes``, which
        # the URL parser resolves, or ``..%2F..%2Finboxes``, which a server in front of the API
        # may) must not turn it into a read of another API endpoint, handed to the agent as a
        # file.
        return Reason.BAD_URL
    return url


def redirect_url(location: str | None, current: URL, api: Origin) -> URL | Reason:
    """The target of a redirect from ``current`` to ``location`` (relative allowed), or why it
    is not followed."""
    if not location:
        return Reason.REDIRECT_REFUSED
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError):
        return Reason.REDIRECT_REFUSED
    if target.scheme not in api.redirect_schemes or not target.raw_host:
        return Reason.REDIRECT_REFUSED
    if target.raw_user is not None or target.raw_password is not None:
        return Reason.REDIRECT_REFUSED
    return target


def next_step(status: int, *, redirected: bool) -> Step | Reason:
    """What a response's status means: a step, or the reason the attachment is given up on.

    ``redirected``: the request was already a redirect's target, so another redirect is refused.
    """
    if 200 <= status < 300:
        return Step.READ
    if status in REDIRECT_STATUSES:
        return Reason.REDIRECT_REFUSED if redirected else Step.FOLLOW
    if status in (401, 403):
        return Reason.UNAUTHORIZED
    if status in (404, 410):
        return Reason.NOT_FOUND
    if status in RETRY_STATUSES or status >= 500:
        return Step.RETRY
    return Reason.HTTP_ERROR


def announced_too_large(size: object, max_bytes: int) -> bool:
    """Whether a ``sizeBytes`` or ``Content-Length`` value already says the file is over the
    bound. Only ever a reason to refuse early: a smaller announced size is never trusted, the
    body is bounded while it is read."""
    if isinstance(size, str):
        size = int(size) if size.isascii() and size.isdigit() else None
    return isinstance(size, int) and not isinstance(size, bool) and size > max_bytes
