"""The addresses of a ``from`` or ``to`` value, as the routes, the guard and the rate limits see
them: every author the header names, none a display name only pretends to be, in one canonical
form.

A sender writes the header, so everything here is bounded: a value longer than
:data:`MAX_HEADER` is not read, the email package's parser (recursive on nested comments) is
never allowed to raise, and only short values are cached.
"""

from __future__ import annotations

import contextlib
import functools
import re
from email.utils import getaddresses
from typing import Final

MAX_HEADER: Final = 4096
"""Characters of a value read for addresses; a longer one has none (:func:`unreadable`). A real
header naming a few dozen people fits; the email package's parser is slow and recursive on some
longer ones."""
CACHED_UP_TO: Final = 256
"""Values up to this long are cached: they come again and again (an inbox's own address, a busy
sender), and a cache of long ones would hold megabytes a stranger chose."""

_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS: Final = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# One mailbox in its everyday shapes, ``a@b.c`` or ``Name <a@b.c>`` with a name of letters,
# digits, spaces, dots, underscores and hyphens: for these the email package's parser gives the
# address as written (a test holds the two to the same answers). Anything else (quotes, comments,
# groups, lists, encoded words) goes to that parser.
_ONE_MAILBOX: Final = re.compile(
    rf"[ \t]*(?:[A-Za-z0-9._-](?:[A-Za-z0-9 ._-]*[A-Za-z0-9._-])?[ \t]*)?<({_PLAIN_ADDRESS})>[ \t]*"
    rf"|[ \t]*({_PLAIN_ADDRESS})[ \t]*"
)
_DOT_ATOM: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_ANGLE: Final = re.compile(r"<([^<>]*)(?:>|$)")
# What the parser hands back that can be an address: a local part (quoted ones may hold spaces),
# an @, a domain; never an angle bracket, which only a malformed header leaves in it.
_MAILBOX: Final = re.compile(r'(?:"[^"<>]+"|[^\s"<>@]+)@[^\s"<>@]+')


def addresses(header: str | None) -> tuple[str, ...]:
    """The canonical addresses (:func:`canonical`) of a header value, each once, in order:
    ``Jane <Jane@X.com>`` -> ``jane@x.com``. Empty for no value, and for one that names no
    address or is too long or too odd to read (:func:`unreadable` tells those apart)."""
    if not header:
        return ()
    if (simple := _ONE_MAILBOX.fullmatch(header)) is not None:
        return ((simple[1] or simple[2]).lower(),)
    if len(header) > MAX_HEADER:
        return ()
    if len(header) <= CACHED_UP_TO:
        return _cached(header)
    return _read(header)


def unreadable(header: str | None, found: tuple[str, ...] | None = None) -> bool:
    """Whether a header value is there but names no address the bridge can read: a sender it
    cannot identify, which the guard keeps from an agent and the rate limits count together.
    ``found``: its :func:`addresses`, when the caller has them already."""
    if found is None:
        found = addresses(header)
    return bool(header and header.strip()) and not found


def canonical(address: str) -> str:
    """One form for one mailbox: lower case, a quoted local part that needs no quotes unquoted,
    no trailing dot on the domain, the domain in its ASCII (IDNA) form."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    if len(local) > 2 and local[0] == local[-1] == '"' and _DOT_ATOM.fullmatch(local[1:-1]):
        local = local[1:-1]
    return f"{local}@{ascii_domain(domain.rstrip('.'))}"


def ascii_domain(domain: str) -> str:
    """``domain`` with each label in its ASCII (IDNA) form: ``bücher.example`` ->
    ``xn--bcher-kva.example``. A label IDNA cannot write, or holding a glob character (a route's
    pattern), stays as it is."""
    if domain.isascii():
        return domain
    labels = []
    for label in domain.split("."):
        if not label.isascii() and not any(c in label for c in "*?[]"):
            with contextlib.suppress(UnicodeError):
                label = label.encode("idna").decode("ascii")
        labels.append(label)
    return ".".join(labels)


@functools.lru_cache(maxsize=4096)
def _cached(header: str) -> tuple[str, ...]:
    # The email package's parser costs ~30 us a call.
    return _read(header)


def _read(header: str) -> tuple[str, ...]:
    try:
        parsed = [addr for _, addr in getaddresses([header]) if addr]
    except Exception:  # recursion on nested comments, or any other failure of the parser
        return ()
    # A sender chooses the display name. Written unquoted with an @ in it, ``ceo@x.com
    # <attacker@evil.org>``, the parser reads it as a second address, which a route's `from` or a
    # limit's sender key would then trust. Every address the parser found counts, but for those
    # written only where a display name goes: before a mailbox's non-empty angle-addr.
    names, angles = _display_names(header)
    found = dict.fromkeys(
        canonical(a)
        for a in parsed
        if "@" in a and not (a.lower() in names and a.lower() not in angles)
    )
    return tuple(a for a in found if _MAILBOX.fullmatch(a))


def _display_names(header: str) -> tuple[set[str], set[str]]:
    """(the bare addresses written before a non-empty angle-addr in their mailbox; the
    addresses written inside angle-addrs), lower-cased."""
    names: set[str] = set()
    angles: set[str] = set()
    for mailbox in re.split(r"[,;]", _outside_quotes_and_comments(header)):
        start = 0
        for angle in _ANGLE.finditer(mailbox):
            inside = angle[1].strip()
            if inside:
                angles.add(inside.rsplit(":", 1)[-1].strip().lower())
                before = mailbox[start : angle.start()].split()
                names.update(word.strip("<>").lower() for word in before if "@" in word)
            start = angle.end()
    return names, angles


def _outside_quotes_and_comments(header: str) -> str:
    """``header`` with each quoted string replaced by ``""`` and each comment (nested ones too)
    by a space; one that is never closed runs to the end. One pass: linear in the length."""
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            if char == '"':
                quoted = False
                out.append('""')
        elif depth:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if not depth:
                    out.append(" ")
        elif char == '"':
            quoted = True
        elif char == "(":
            depth = 1
        else:
            out.append(char)
    return "".join(out)
