"""A tiny HTML builder that escapes every text and attribute value: the only way the console's
pages are written, so text written by strangers (subjects, addresses, receivers' error bodies)
can never become markup. Every text is also shown as :func:`~bridge.printable.printable` shows it
to a terminal: a subject's escape sequence or bidi override reaches neither the browser (which
would show the text reversed) nor a terminal reading the page (``curl /``). Attribute values (ids
and names the script reads back) are kept exact.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable

from bridge.printable import printable


class Html(str):
    """Markup already escaped; anything else put in an element is escaped."""

    __slots__ = ()


Node = Html | str | int | float | None | Iterable["Node"]


def render(node: Node) -> Html:
    """``node`` as markup: text escaped (markup, and what is not printable), None left out,
    lists joined."""
    if node is None:
        return Html("")
    if isinstance(node, Html):
        return node
    if isinstance(node, str | int | float):
        return Html(html.escape(printable(node), quote=True))
    return Html("".join(render(child) for child in node))


def el(tag: str, *children: Node, **attrs: str | bool | None) -> Html:
    """``<tag attrs>children</tag>``. ``class_`` stands for ``class``, ``data_x`` for
    ``data-x``; a True attribute is written bare, False and None are left out."""
    parts = [tag]
    for name, value in attrs.items():
        name = name.rstrip("_").replace("_", "-")
        if value is True:
            parts.append(name)
        elif isinstance(value, str):
            parts.append(f'{name}="{html.escape(value, quote=True)}"')
    head = " ".join(parts)
    if tag in ("meta", "link", "input", "br"):
        return Html(f"<{head}>")
    return Html(f"<{head}>{render(list(children))}</{tag}>")


def when(ts: object) -> str:
    """A Unix time as UTC text (the page's script shows it in local time); a dash for none."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "—"
    at = datetime.datetime.fromtimestamp(float(ts), datetime.UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def time_el(ts: object) -> Html:
    """A ``<time>`` the script re-renders in local time."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return el("span", "—")
    return el("time", when(ts), data_ts=f"{float(ts):.3f}")


def size(n: object) -> str:
    """Bytes in binary units: ``1.5 MiB``."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "—"
    value = float(n)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def duration(seconds: object) -> str:
    """``3d 4h``, ``2h 05m``, ``4m 09s``, ``12s``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "—"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"
