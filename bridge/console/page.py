"""The console's two pages, rendered on the server: the login form, and the console with every
panel filled from the same JSON the page's script later refreshes it from (``/api/overview``,
``/api/events``, ``/api/dead``). Everything goes through :mod:`bridge.console.html`, which
escapes; the page loads its script (a module importing ``panels.js``) and stylesheet from
``/static/``, nothing inline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from bridge.console.html import Html, Node, duration, el, size, time_el

TITLE: Final = "openmail-bridge console"
EVENT_COLUMNS: Final = ("time", "event id", "source", "inbox", "type", "routes", "outcome")
CONTENT_COLUMNS: Final = ("from", "subject")
SINK_COLUMNS: Final = (
    "sink",
    "state",
    "pending",
    "dead",
    "delivered/min",
    "delivered",
    "last error",
    "when",
)


def _document(body: Sequence[Node], **data: str) -> Html:
    head = el(
        "head",
        el("meta", charset="utf-8"),
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("meta", name="color-scheme", content="light dark"),
        el("title", TITLE),
        el("link", rel="icon", href="/static/favicon.svg", type="image/svg+xml"),
        el("link", rel="stylesheet", href="/static/console.css"),
        el("script", src="/static/console.js", type="module"),
    )
    attrs = {f"data_{key}": value for key, value in data.items()}
    return Html("<!doctype html>\n" + el("html", head, el("body", *body, **attrs), lang="en"))


def login_page() -> Html:
    """The login form. Its field has no ``name``: without the script nothing is submitted, so
    the token can never end up in a URL."""
    form = el(
        "form",
        el(
            "label",
            "Admin token",
            el(
                "input",
                type="password",
                id="token",
                required=True,
                autocomplete="current-password",
                autofocus=True,
            ),
        ),
        el("button", "Log in", type="submit"),
        el("p", "", id="login-error", class_="error", role="alert"),
        id="login",
        method="post",
        action="/login",
    )
    return _document(
        [
            el(
                "main",
                el("h1", TITLE),
                el("p", "This console needs the bridge's admin.token."),
                form,
            )
        ],
        page="login",
    )


def _dl(rows: Sequence[tuple[str, Node, str]]) -> Html:
    return el("dl", [[el("dt", label), el("dd", value, id=ident)] for label, value, ident in rows])


def _state(word: object, ident: str) -> Html:
    return el("span", str(word), id=ident, class_=f"state state-{str(word).replace(' ', '-')}")


def _sources(sources: Mapping[str, object]) -> Html:
    ws, hook, nats = sources.get("websocket"), sources.get("webhook"), sources.get("nats")
    blocks = []
    if isinstance(ws, Mapping):
        blocks.append(
            el(
                "div",
                el("h3", "WebSocket"),
                _dl(
                    [
                        ("state", _state(ws.get("state"), "ws-state"), "ws-state-cell"),
                        ("since", time_el(ws.get("since")), "ws-since"),
                        ("reason", ws.get("reason") or "—", "ws-reason"),
                        ("cursor", ws.get("cursor") or "—", "ws-cursor"),
                        ("last event", time_el(ws.get("last_event_at")), "ws-last"),
                        ("reconnects", _num(ws.get("reconnects")), "ws-reconnects"),
                        ("possible gaps", _num(ws.get("possible_gaps")), "ws-gaps"),
                    ]
                ),
                id="ws",
            )
        )
    if isinstance(hook, Mapping):
        rejected = hook.get("rejected")
        counts = rejected.items() if isinstance(rejected, Mapping) else ()
        blocks.append(
            el(
                "div",
                el("h3", "Webhook listener"),
                _dl(
                    [
                        ("state", _state(hook.get("state"), "hook-state"), "hook-state-cell"),
                        ("address", f"{hook.get('listen')}{hook.get('path')}", "hook-listen"),
                        ("last event", time_el(hook.get("last_event_at")), "hook-last"),
                        ("accepted", _num(hook.get("accepted")), "hook-accepted"),
                        (
                            "rejected",
                            el("ul", [el("li", f"{k}: {v}") for k, v in counts]) if counts else "0",
                            "hook-rejected",
                        ),
                    ]
                ),
                id="webhook",
            )
        )
    if isinstance(nats, Mapping):
        consumer = nats.get("consumer")
        blocks.append(
            el(
                "div",
                el("h3", "NATS"),
                _dl(
                    [
                        ("connection", _state(nats.get("state"), "nats-state"), "nats-state-cell"),
                        ("server", nats.get("server") or "—", "nats-server"),
                        ("reconnects", _num(nats.get("reconnects")), "nats-reconnects"),
                        (
                            "consumer",
                            str(consumer.get("state")) if isinstance(consumer, Mapping) else "—",
                            "nats-consumer",
                        ),
                        ("last error", nats.get("last_error") or "—", "nats-error"),
                    ]
                ),
                id="nats",
            )
        )
    return el("div", blocks or el("p", "No source is enabled."), class_="body", id="sources-body")


def _num(value: object) -> str:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def _spool(spool: Mapping[str, object]) -> Html:
    held, bound = spool.get("bytes"), spool.get("max_bytes")
    free, disk, floor = spool.get("free_disk"), spool.get("disk_size"), spool.get("min_free")
    return el(
        "div",
        el("label", "held", for_="spool-meter"),
        el("meter", id="spool-meter", min="0", max=_num(bound), value=_num(held)),
        el("span", f"{size(held)} of max_bytes {size(bound)}", id="spool-text"),
        el("label", "free disk", for_="disk-meter"),
        el("meter", id="disk-meter", min="0", max=_num(disk), value=_num(free), low=_num(floor)),
        el("span", f"{size(free)} free, min_free {size(floor)}", id="disk-text"),
        class_="body bars",
        id="spool-body",
    )


def _sinks(sinks: Sequence[Mapping[str, object]]) -> Html:
    rows = [
        el(
            "tr",
            el("td", str(s.get("name"))),
            el("td", _state(s.get("state"), f"sink-state-{s.get('name')}")),
            el("td", _num(s.get("pending"))),
            el("td", _num(s.get("dead"))),
            el("td", _num(s.get("delivered_per_minute"))),
            el("td", _num(s.get("delivered"))),
            el("td", str(s.get("last_error") or "—"), class_="error"),
            el("td", time_el(s.get("last_error_at"))),
            data_sink=str(s.get("name")),
        )
        for s in sinks
    ]
    head = el("thead", el("tr", [el("th", c) for c in SINK_COLUMNS]))
    return el("table", head, el("tbody", rows, id="sinks-body"))


def _outcome(outcome: Mapping[str, object]) -> Html:
    word = str(outcome.get("outcome"))
    text = f"{outcome.get('sink')}: {word}"
    if word in ("retrying", "dead"):
        attempts = outcome.get("attempts")
        text += f" ({attempts} {'attempt' if attempts == 1 else 'attempts'})"
    return el("span", text, class_=f"outcome outcome-{word}")


def event_row(event: Mapping[str, object], *, show_content: bool) -> Html:
    routes = event.get("routes")
    outcomes = event.get("outcomes")
    cells = [
        el("td", time_el(event.get("received_at"))),
        el("td", el("code", str(event.get("event_id")))),
        el("td", str(event.get("source"))),
        el("td", str(event.get("inbox_id") or "—")),
        el("td", str(event.get("type"))),
        el("td", ", ".join(map(str, routes)) if isinstance(routes, list) else "?", class_="routes"),
        el(
            "td",
            [_outcome(o) for o in outcomes if isinstance(o, Mapping)]
            if isinstance(outcomes, list)
            else None,
        ),
    ]
    if show_content:
        content = event.get("content")
        shown = content if isinstance(content, Mapping) else {}
        cells += [
            el("td", str(shown.get("from") or "—"), class_="text"),
            el("td", str(shown.get("subject") or "—"), class_="text"),
        ]
    return el("tr", cells, class_="event", tabindex="0", data_event_id=str(event.get("event_id")))


def _events(events: Sequence[Mapping[str, object]], *, show_content: bool) -> Html:
    columns = EVENT_COLUMNS + (CONTENT_COLUMNS if show_content else ())
    rows = [event_row(e, show_content=show_content) for e in events]
    return el(
        "table",
        el("thead", el("tr", [el("th", c) for c in columns])),
        el(
            "tbody",
            rows or el("tr", el("td", "No events yet.", colspan=str(len(columns)))),
            id="events-body",
        ),
        id="events-table",
    )


def _button(label: str, action: str, sink: str, event_id: str | None = None) -> Html:
    return el(
        "button",
        label,
        type="button",
        class_=action,
        data_action=action,
        data_sink=sink,
        data_event_id=event_id,
    )


def _dead(dead: Sequence[Mapping[str, object]]) -> Html:
    blocks = []
    for entry in dead:
        sink = str(entry.get("sink"))
        items = entry.get("items")
        rows = [
            el(
                "tr",
                el("td", el("code", str(i.get("event_id")))),
                el("td", str(i.get("type"))),
                el("td", str(i.get("inbox_id") or "—")),
                el("td", _num(i.get("attempts"))),
                el("td", str(i.get("error") or "—"), class_="error"),
                el("td", time_el(i.get("dead_at"))),
                el(
                    "td",
                    _button("Retry", "retry", sink, str(i.get("event_id"))),
                    _button("Purge", "purge", sink, str(i.get("event_id"))),
                ),
                data_event_id=str(i.get("event_id")),
            )
            for i in (items if isinstance(items, list) else [])
            if isinstance(i, Mapping)
        ]
        blocks.append(
            el(
                "div",
                el("h3", f"{sink} ({entry.get('count')})"),
                _button("Retry all", "retry", sink),
                _button("Purge all", "purge", sink),
                el("table", el("tbody", rows)),
                class_="dead-sink",
                data_sink=sink,
            )
        )
    return el("div", blocks or el("p", "No dead letters."), id="dead-body")


def console_page(
    overview: Mapping[str, object],
    events: Sequence[Mapping[str, object]],
    dead: Sequence[Mapping[str, object]],
    *,
    can_log_out: bool,
) -> Html:
    """The console, filled in."""
    readiness = overview.get("readiness")
    ready = readiness if isinstance(readiness, Mapping) else {}
    state = str(ready.get("state"))
    show = overview.get("show_content") is True
    sources, spool, sinks = overview.get("sources"), overview.get("spool"), overview.get("sinks")
    header = el(
        "header",
        el("h1", "openmail-bridge ", el("span", str(overview.get("version")), id="version")),
        el(
            "p",
            _state(state, "readiness-state"),
            " ",
            el("span", str(ready.get("reason") or ""), id="readiness-reason"),
            id="readiness",
        ),
        el("p", "up ", el("span", duration(overview.get("uptime")), id="uptime")),
        el("p", "", id="connection", class_="lost", role="status", hidden=True),
        el("button", "Log out", type="button", id="logout") if can_log_out else None,
    )
    panels = [
        el(
            "section",
            el("h2", "Sources"),
            _sources(sources if isinstance(sources, Mapping) else {}),
            id="sources",
        ),
        el(
            "section",
            el("h2", "Spool"),
            _spool(spool if isinstance(spool, Mapping) else {}),
            id="spool",
        ),
        el(
            "section",
            el("h2", "Sinks"),
            _sinks([s for s in sinks if isinstance(s, Mapping)] if isinstance(sinks, list) else []),
            id="sinks",
        ),
        el(
            "section",
            el("h2", "Throughput, last 15 minutes"),
            Html(
                '<svg id="chart" viewBox="0 0 900 160" preserveAspectRatio="none" role="img" '
                'aria-label="events accepted and delivered per second"></svg>'
            ),
            el("p", "", id="chart-legend"),
            id="throughput",
        ),
        # Dead letters before the long list of events: they are what asks for an action.
        el(
            "section",
            el("h2", "Dead letters"),
            el("p", "", id="dead-status", role="status"),
            _dead(dead),
            id="dead",
        ),
        el("section", el("h2", "Recent events"), _events(events, show_content=show), id="events"),
    ]
    return _document(
        [header, el("main", panels)], page="console", show_content="true" if show else "false"
    )
