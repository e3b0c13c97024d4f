// The console's panels, drawn from the JSON API's answers: sources, spool, sinks, the throughput
// chart (inline SVG), recent events with their details, dead letters. Every value is set as text
// (append/textContent) on elements built here: no data is ever parsed as HTML. Every text goes
// through shown(), as every text of the server's page goes through bridge/printable.py.

const $ = (id) => document.getElementById(id);
const CHART_W = 900;
const CHART_H = 160;
const SVG = "http://www.w3.org/2000/svg";

// --- building elements -------------------------------------------------------------------

// What str.isprintable() refuses: Unicode's "Other" (controls, format characters such as the
// bidi overrides, surrogates, private use, unassigned) and "Separator" categories, but the space.
const UNPRINTABLE = /[\p{C}\p{Z}]/gu;
const hex = (code, digits) => code.toString(16).padStart(digits, "0");

function escaped(char) {
  const code = char.codePointAt(0);
  if (code < 0x100) return `\\x${hex(code, 2)}`;
  return code < 0x10000 ? `\\u${hex(code, 4)}` : `\\U${hex(code, 8)}`;
}

// ``value`` as text to show, as bridge/printable.py shows it: a subject's escape sequence or
// bidi override (which would show the text reversed) appears as its escape, "\x1b", "\u202e".
export function shown(value) {
  return String(value).replace(UNPRINTABLE, (c) => (c === " " ? c : escaped(c)));
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : shown(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const num = (v) => (isNum(v) ? String(v) : "—");
const text = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));

export function when(ts) {
  if (!isNum(ts)) return "—";
  const at = new Date(ts * 1000);
  const today = at.toDateString() === new Date().toDateString();
  return today ? at.toLocaleTimeString() : at.toLocaleString();
}

const timeEl = (ts) => (isNum(ts) ? el("time", { "data-ts": ts.toFixed(3) }, when(ts)) : "—");

function size(n) {
  if (!isNum(n)) return "—";
  if (Math.abs(n) < 1024) return `${n.toFixed(0)} B`;
  let value = n;
  for (const unit of ["KiB", "MiB", "GiB"]) {
    value /= 1024;
    if (Math.abs(value) < 1024) return `${value.toFixed(1)} ${unit}`;
  }
  return `${(value / 1024).toFixed(1)} TiB`;
}

function duration(seconds) {
  if (!isNum(seconds)) return "—";
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const two = (x) => String(x).padStart(2, "0");
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${two(m)}m`;
  if (m) return `${m}m ${two(s)}s`;
  return `${s}s`;
}

const stateEl = (word, id) =>
  el("span", { id, class: `state state-${String(word).replaceAll(" ", "-")}` }, String(word));

// --- the panels ----------------------------------------------------------------------------

function dl(rows) {
  const pairs = rows.map(([label, value, id]) => [el("dt", {}, label), el("dd", { id }, value)]);
  return el("dl", {}, pairs);
}

function rejectedList(rejected) {
  if (!rejected.length) return "0";
  return el("ul", {}, rejected.map(([reason, n]) => el("li", {}, `${reason}: ${n}`)));
}

function routesText(routes) {
  if (!Array.isArray(routes)) return "payload too large to read here";
  return routes.join(", ") || "none";
}

function sourcesBody(sources) {
  const blocks = [];
  const ws = sources.websocket;
  if (ws) {
    blocks.push(
      el("div", { id: "ws" }, el("h3", {}, "WebSocket"), dl([
        ["state", stateEl(ws.state, "ws-state"), "ws-state-cell"],
        ["since", timeEl(ws.since), "ws-since"],
        ["reason", text(ws.reason), "ws-reason"],
        ["cursor", text(ws.cursor), "ws-cursor"],
        ["last event", timeEl(ws.last_event_at), "ws-last"],
        ["reconnects", num(ws.reconnects), "ws-reconnects"],
        ["possible gaps", num(ws.possible_gaps), "ws-gaps"],
      ])),
    );
  }
  const hook = sources.webhook;
  if (hook) {
    const rejected = Object.entries(hook.rejected || {});
    blocks.push(
      el("div", { id: "webhook" }, el("h3", {}, "Webhook listener"), dl([
        ["state", stateEl(hook.state, "hook-state"), "hook-state-cell"],
        ["address", `${hook.listen}${hook.path}`, "hook-listen"],
        ["last event", timeEl(hook.last_event_at), "hook-last"],
        ["accepted", num(hook.accepted), "hook-accepted"],
        ["rejected", rejectedList(rejected), "hook-rejected"],
      ])),
    );
  }
  const nats = sources.nats;
  if (nats) {
    blocks.push(
      el("div", { id: "nats" }, el("h3", {}, "NATS"), dl([
        ["connection", stateEl(nats.state, "nats-state"), "nats-state-cell"],
        ["server", text(nats.server), "nats-server"],
        ["reconnects", num(nats.reconnects), "nats-reconnects"],
        ["consumer", nats.consumer ? String(nats.consumer.state) : "—", "nats-consumer"],
        ["last error", text(nats.last_error), "nats-error"],
      ])),
    );
  }
  return blocks.length ? blocks : [el("p", {}, "No source is enabled.")];
}

export function renderOverview(o) {
  $("version").textContent = shown(o.version);
  $("uptime").textContent = duration(o.uptime);
  $("readiness-state").replaceWith(stateEl(o.readiness.state, "readiness-state"));
  $("readiness-reason").textContent = shown(o.readiness.reason || "");
  $("sources-body").replaceChildren(...sourcesBody(o.sources));
  const spool = o.spool;
  const meter = (id, attrs) => {
    const m = $(id);
    for (const [name, value] of Object.entries(attrs)) {
      if (isNum(value)) m.setAttribute(name, String(value));
    }
  };
  meter("spool-meter", { max: spool.max_bytes, value: spool.bytes });
  $("spool-text").textContent = `${size(spool.bytes)} of max_bytes ${size(spool.max_bytes)}`;
  meter("disk-meter", { max: spool.disk_size, value: spool.free_disk, low: spool.min_free });
  $("disk-text").textContent = `${size(spool.free_disk)} free, min_free ${size(spool.min_free)}`;
  $("sinks-body").replaceChildren(
    ...o.sinks.map((s) =>
      el("tr", { "data-sink": s.name },
        el("td", {}, String(s.name)),
        el("td", {}, stateEl(s.state, `sink-state-${s.name}`)),
        el("td", {}, num(s.pending)),
        el("td", {}, num(s.dead)),
        el("td", {}, num(s.delivered_per_minute)),
        el("td", {}, num(s.delivered)),
        el("td", { class: "error" }, text(s.last_error)),
        el("td", {}, timeEl(s.last_error_at)),
      ),
    ),
  );
}

function outcomeEl(o) {
  let shown = `${o.sink}: ${o.outcome}`;
  if (o.outcome === "retrying" || o.outcome === "dead") {
    shown += ` (${o.attempts} ${o.attempts === 1 ? "attempt" : "attempts"})`;
  }
  return el("span", { class: `outcome outcome-${o.outcome}` }, shown);
}

function eventRow(e, showContent) {
  const cells = [
    el("td", {}, timeEl(e.received_at)),
    el("td", {}, el("code", {}, String(e.event_id))),
    el("td", {}, String(e.source)),
    el("td", {}, text(e.inbox_id)),
    el("td", {}, String(e.type)),
    el("td", { class: "routes" }, Array.isArray(e.routes) ? e.routes.join(", ") : "?"),
    el("td", {}, (e.outcomes || []).map(outcomeEl)),
  ];
  if (showContent) {
    const c = e.content || {};
    cells.push(el("td", { class: "text" }, text(c.from)));
    cells.push(el("td", { class: "text" }, text(c.subject)));
  }
  return el("tr", { class: "event", tabindex: "0", "data-event-id": e.event_id }, cells);
}

function columns() {
  return $("events-table").querySelectorAll("thead th").length;
}

export function detailRow(eventId, d) {
  const box = el("div", { class: "detail" });
  box.append(el("h3", {}, `Event ${eventId}`));
  if (d === null) {
    box.append(el("p", {}, "Loading…"));
  } else if (d.error) {
    box.append(el("p", { class: "error" }, d.error));
  } else {
    box.append(dl([
      ["received", timeEl(d.received_at), null],
      ["source", String(d.source), null],
      ["routes matched now", routesText(d.routes), null],
      ["left the spool", timeEl(d.completed_at), null],
    ]));
    if (d.content) {
      box.append(dl([
        ["from", text(d.content.from), null],
        ["subject", text(d.content.subject), null],
      ]));
    }
    box.append(el("h4", {}, "Per sink"));
    const why = (o) => (o.error ? el("span", { class: "error" }, ` — ${o.error}`) : "");
    box.append(el("ul", {}, (d.outcomes || []).map((o) => el("li", {}, outcomeEl(o), why(o)))));
    box.append(el("h4", {}, "Attempts since the bridge started"));
    const rows = (d.activity || []).map((a) =>
      el("tr", {}, el("td", {}, timeEl(a.ts)), el("td", {}, a.kind), el("td", {}, text(a.sink)),
        el("td", {}, num(a.attempt)), el("td", { class: "error" }, text(a.error))));
    const head = ["time", "what", "sink", "attempt", "error"].map((h) => el("th", {}, h));
    box.append(rows.length
      ? el("table", { class: "attempts" },
        el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows))
      : el("p", {}, "None remembered (the bridge keeps its last 1000 records in memory)."));
    if (d.earlier && d.earlier.length) {
      box.append(el("p", {}, `Also in the history ${d.earlier.length} more time(s).`));
    }
  }
  const cell = el("td", { colspan: columns() }, box);
  return el("tr", { class: "detail-row", "data-detail-of": eventId }, cell);
}

// ``open``: event id -> the detail shown under its row (null while it loads).
export function renderEvents(list, showContent, open) {
  const body = $("events-body");
  const rows = [];
  for (const e of list) {
    rows.push(eventRow(e, showContent));
    if (open.has(e.event_id)) rows.push(detailRow(e.event_id, open.get(e.event_id)));
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: columns() }, "No events yet.")));
  body.replaceChildren(...rows);
}

function button(label, action, sink, eventId) {
  const attrs = { type: "button", class: action, "data-action": action, "data-sink": sink };
  return el("button", { ...attrs, "data-event-id": eventId }, label);
}

export function renderDead(sinks) {
  const blocks = sinks.map((s) =>
    el("div", { class: "dead-sink", "data-sink": s.sink },
      el("h3", {}, `${s.sink} (${s.count})`),
      button("Retry all", "retry", s.sink, null),
      button("Purge all", "purge", s.sink, null),
      el("table", {}, el("tbody", {}, s.items.map((i) =>
        el("tr", { "data-event-id": i.event_id },
          el("td", {}, el("code", {}, String(i.event_id))),
          el("td", {}, String(i.type)),
          el("td", {}, text(i.inbox_id)),
          el("td", {}, num(i.attempts)),
          el("td", { class: "error" }, text(i.error)),
          el("td", {}, timeEl(i.dead_at)),
          el("td", {},
            button("Retry", "retry", s.sink, i.event_id),
            button("Purge", "purge", s.sink, i.event_id)),
        )))),
    ));
  $("dead-body").replaceChildren(...(blocks.length ? blocks : [el("p", {}, "No dead letters.")]));
}

export function renderChart(t) {
  const delivered = Object.entries(t.delivered || {})
    .map(([sink, s]) => [`delivered to ${sink}`, s]);
  const series = [["accepted", t.accepted], ...delivered];
  const top = Math.max(1, ...series.map(([, s]) => Math.max(0, ...s)));
  const chart = $("chart");
  const base = CHART_H - 4;
  const points = (s) => {
    const step = CHART_W / Math.max(1, s.length - 1);
    const y = (v) => (base - (v / top) * (CHART_H - 8)).toFixed(1);
    return s.map((v, i) => `${(i * step).toFixed(1)},${y(v)}`);
  };
  // Accepted as a shaded area, each sink's deliveries as a line over it.
  const outline = [`0,${base}`, ...points(t.accepted), `${CHART_W},${base}`];
  const area = svg("polygon", { points: outline.join(" "), class: "area" });
  const lines = series.map(([, s], k) =>
    svg("polyline", { points: points(s).join(" "), class: `series series-${k % 8}` }));
  const axis = svg("line", { x1: 0, y1: base, x2: CHART_W, y2: base, class: "axis" });
  chart.replaceChildren(axis, area, ...lines);
  $("chart-legend").replaceChildren(
    ...series.map(([name, s], k) => el("span", { class: "legend" },
      el("span", { class: `swatch series-${k % 8}` }),
      `${name}: ${s.reduce((a, b) => a + b, 0)}`)),
    el("span", { class: "legend" }, `peak ${top}/s`),
  );
}

export function deadStatus(message, failed) {
  const line = $("dead-status");
  line.textContent = shown(message);
  line.classList.toggle("error", Boolean(failed));
}
