"""What looks like a credential, and masking it: the one definition the logs, ``check``,
``/status``, ``last_error`` and ``dlq list`` share.

Pure: strings in, strings out. A name (a log key, a query parameter, a header, a JSON key) looks
secret when one of its words is ``key``, ``sig``, ``auth``, ``pass`` or ``pwd``, or it contains
``token``, ``secret``, ``passw``, ``apikey``, ``signature``, ``credential``, ``authoriz``,
``session`` or ``cookie`` (case-insensitive), unless it is one of the few such names that name
no secret (``dedup_key``). Values are masked, never names, so a reader still sees *that* a
credential was there.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Final

MASK: Final = "***"
MIN_LITERAL: Final = 4
"""Shorter literal values are not masked: replacing every "abc" would garble text, not hide
anything worth hiding."""

_SECRET_WORDS: Final = frozenset({"key", "sig", "auth", "pass", "pwd"})
_SECRET_PARTS: Final = (
    "token",
    "secret",
    "passw",
    "apikey",
    "signature",
    "credential",
    "authoriz",
    "session",
    "cookie",
)
_NOT_SECRET: Final = frozenset({"dedup_key", "public_key", "auth_failure"})
"""Names with a secret-looking word that name no secret: a content hash, a public key, a mode."""
_WORD: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_AUTH_SCHEME: Final = re.compile(r"(?i)^(bearer|basic|token|digest|negotiate)\s+")

# A cheap first scan: most log values hold none of these, and then nothing else runs. Plain
# substring tests: an alternation regex over as many words costs several times more.
_MARKERS: Final = (
    "key",
    "token",
    "secret",
    "pass",
    "pwd",
    "sig",
    "auth",
    "credential",
    "session",
    "cookie",
    "bearer",
    "om_live_",
    "om_test_",
    "whsec_",
)
_USERINFO: Final = re.compile(r"(?i)(?<![a-z0-9+.\-])([a-z][a-z0-9+.\-]*://)[^\s/?#'\"<>]*@")
"""``scheme://user:pass@``: everything up to the last ``@`` of the authority. A scheme starts
where a run of scheme characters does (not at every ``\b`` inside ``a-a-a-...``): a match tried at
each of them made a long run quadratic."""
_ASSIGN: Final = re.compile(
    r"(?i)(?<![\w.%\-])([\w.%\-]+)(=[\"']?)((?:(?:bearer|basic)\s+)?[^&\s'\"#<>]+)"
)
"""``name=value`` in a query string, a form body or free text."""
_HEADER: Final = re.compile(
    r"(?i)(?<![\w\-])((?:[a-z0-9]+-)+[a-z0-9]+|authorization|cookie)(\s*:\s*[\"']?)"
    r"((?:(?:bearer|basic|token|digest)\s+)?[^\s'\"&;]+)"
)
"""``Header-Name: value`` as a receiver echoes request headers. Only hyphenated names,
``Authorization`` and ``Cookie``: a colon after a config key path (``openmail.api_key: is
required``) is prose."""
_QUOTED_PAIR: Final = re.compile(
    r"([\"'])([^\"'\\]{1,100})\1(\s*:\s*)([\"'])((?:(?!\4)[^\\]|\\.)*)\4"
)
"""``"name": "value"`` in JSON or a Python repr."""
_PATTERNS: Final = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"()\bom_(?:live|test)_[A-Za-z0-9_]+"),
    re.compile(r"()\bwhsec_[A-Za-z0-9+/=]+"),
)


@functools.lru_cache(maxsize=4096)
def names_secret(name: str) -> bool:
    """Whether a value under ``name`` (log key, query parameter, header, JSON key) is masked."""
    lowered = name.lower()
    if lowered in _NOT_SECRET:
        return False
    if any(part in lowered for part in _SECRET_PARTS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(name))


def literal_secrets(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` fit for literal masking, longest first (so no shorter one leaves a tail)."""
    return _ordered(tuple(values))


@functools.lru_cache(maxsize=64)
def _ordered(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if len(v) >= MIN_LITERAL}, key=len, reverse=True))


@functools.lru_cache(maxsize=64)
def _literal_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret as a receiver may echo it back: as it is, and percent-encoded (every reserved
    character; all but ``/``, as in a URL's path; spaces as ``+``, as in a form body), longest
    first, so that no shorter form leaves a tail of a longer one."""
    forms = {
        form
        for secret in secrets
        for form in (
            secret,
            urllib.parse.quote(secret, safe=""),
            urllib.parse.quote(secret),
            urllib.parse.quote_plus(secret),
        )
    }
    return tuple(sorted(forms, key=len, reverse=True))


def _mask_literals(text: str, forms: Iterable[str]) -> str:
    """``text`` with every one of ``forms`` masked, in any case: one form after another, each
    found by a plain substring search of the lowered text (linear, unlike a pattern, whatever
    the text and the forms)."""
    lowered = text.lower()
    if len(lowered) != len(text):
        # A character whose lowercase is longer (U+0130) shifts the offsets: match by pattern,
        # only the forms the text holds.
        for form in forms:
            if form.lower() in lowered:
                text = re.sub(re.escape(form), MASK, text, flags=re.IGNORECASE)
        return text
    for form in forms:
        key = form.lower()
        starts: list[int] = []
        at = lowered.find(key)
        while at >= 0:
            starts.append(at)
            at = lowered.find(key, at + len(key))
        if starts:
            text = _masked_at(text, starts, len(key))
            lowered = _masked_at(lowered, starts, len(key))
    return text


def _masked_at(text: str, starts: list[int], width: int) -> str:
    """``text`` with the ``width`` characters from each of ``starts`` (in order, apart) masked."""
    begins = [0, *(start + width for start in starts)]
    ends = [*starts, len(text)]
    return MASK.join(text[begin:end] for begin, end in zip(begins, ends, strict=True))


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The literal values of configured request headers, and each credential after an auth
    scheme (``Bearer xyz`` gives ``xyz`` too): a receiver may echo either."""
    values: list[str] = []
    for value in headers.values():
        values.append(value)
        scheme = _AUTH_SCHEME.match(value)
        if scheme:
            values.append(value[scheme.end() :])
    return values


_PATH_TOKEN: Final = re.compile(
    r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{16,}"
)
"""A path segment that looks random: 16 or more letters, digits, ``_`` and ``-``, with both
letters and digits. Capability URLs (Slack's ``/services/T.../B.../<token>``, a hook's
``/catch/<id>/<token>``) carry their credential there."""


def _path_tokens(path: str) -> list[str]:
    return [seg for seg in path.split("/") if _PATH_TOKEN.fullmatch(seg)]


def url_secrets(url: str) -> list[str]:
    """The user-info, the secret-looking query values and the random-looking path segments of
    ``url``, as written and decoded."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    values: list[str] = _path_tokens(parts.path)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, _, password = userinfo.partition(":")
        values += [userinfo, user, password, urllib.parse.unquote(password)]
        values.append(urllib.parse.unquote(user))
    for query in (parts.query, parts.fragment):
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
            if names_secret(name):
                values.append(value)
                values.append(urllib.parse.quote(value, safe=""))
    return [v for v in values if v]


def credential_lines(text: str) -> list[str]:
    """The secret lines of a NATS credentials or nkey seed file: the JWT and the seed, not the
    ``-----BEGIN ...`` markers or the ``***`` banner between them."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("-", "*"))]


def mask_url(url: str) -> str:
    """``url`` with its user-info shown as ``***@``, secret-looking query (and fragment or
    path-parameter) values and random-looking path segments as ``***``; everything else as
    written."""
    masked = _mask_pairs(_ASSIGN, _USERINFO.sub(_masked_userinfo, url))
    try:
        path = urllib.parse.urlsplit(masked).path
    except ValueError:
        return masked
    for token in _path_tokens(path):
        masked = masked.replace(f"/{token}", f"/{MASK}")
    return masked


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every ``known`` value, URL user-info, secret-looking ``name=value``,
    ``Header-Name: value`` and ``"name": "value"`` pair, bearer token and OpenMail-shaped key
    masked.

    Args:
        known: literal secrets (the running config's); values under 4 characters are ignored.
            Each is masked as it is and percent-encoded, in any case: the forms a receiver
            echoing a request header, URL or form back in an error body gives it.
    """
    if forms := _literal_forms(literal_secrets(known)):
        text = _mask_literals(text, forms)
    if not _may_hold_secret(text):
        return text
    text = _USERINFO.sub(_masked_userinfo, text)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    text = _mask_pairs(_HEADER, text)
    text = _mask_pairs(_ASSIGN, text)
    return _QUOTED_PAIR.sub(_masked_quoted, text)


def _may_hold_secret(text: str) -> bool:
    if "://" in text and "@" in text:
        return True
    lowered = text.lower()
    return any(marker in lowered for marker in _MARKERS)


def _masked_userinfo(match: re.Match[str]) -> str:
    return match.group(1) + MASK + "@"


def _mask_pairs(pattern: re.Pattern[str], text: str) -> str:
    """Masks the value (group 3) of each match whose name (group 1) looks secret. A value under
    a harmless name is searched on, not skipped: ``next=https://h/?token=abc`` holds a token."""
    out: list[str] = []
    pos = 0
    while (match := pattern.search(text, pos)) is not None:
        value = match.group(3)
        # Already masked (``token=***: bad request``): leave the text after the mask alone.
        if not value.startswith(MASK) and names_secret(urllib.parse.unquote_plus(match.group(1))):
            out.append(text[pos : match.start(3)] + MASK)
            pos = match.end(3)
        else:
            out.append(text[pos : match.end(2)])
            pos = match.end(2)
    out.append(text[pos:])
    return "".join(out)


def _masked_quoted(match: re.Match[str]) -> str:
    quote, name, sep, vquote, value = match.group(1, 2, 3, 4, 5)
    if not value or value == MASK or not names_secret(name):
        return match.group(0)
    return f"{quote}{name}{quote}{sep}{vquote}{MASK}{vquote}"
