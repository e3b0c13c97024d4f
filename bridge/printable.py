"""Text that cannot drive a terminal: what the bridge shows an operator comes from strangers.

An event id, inbox id, type, error text or header value may carry escape sequences (OSC 52 writes
the clipboard, OSC 8 makes a link whose text lies, ``\\r`` and CSI rewrite the line) or a bidi
override (U+202E) that shows text reversed. Every character :meth:`str.isprintable` refuses
(controls, format characters, separators other than the space) is shown as its escape.
"""

from __future__ import annotations


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text safe to print; ``keep_newlines``: a traceback's lines stay lines."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or (keep_newlines and c == "\n") else _escaped(c) for c in text
    )


def _escaped(char: str) -> str:
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )
