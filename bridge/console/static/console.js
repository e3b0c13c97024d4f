// The console's script: logs in, follows the bridge (the activity stream, polling while it is
// unavailable), refreshes the panels (panels.js draws them) and sends the dead-letter actions.

import {
  deadStatus,
  detailRow,
  el,
  renderChart,
  renderDead,
  renderEvents,
  renderOverview,
  shown,
  when,
} from "./panels.js";

const $ = (id) => document.getElementById(id);
const OVERVIEW_EVERY = 2000;
const CHART_EVERY = 5000;
const DEAD_EVERY = 10000;
const POLL_EVERY = 2000; // events, while the stream is down
const STREAM_RETRY = 5000;

const page = { showContent: false, open: new Map() }; // open: event id -> its detail, shown

// --- talking to the bridge ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return `HTTP ${response.status}: ${body.error}`;
  } catch (e) {
    // not JSON: the status says enough
  }
  return `HTTP ${response.status}`;
}

const connection = { lostAt: null, loggedOut: false };

function showConnection() {
  const banner = $("connection");
  if (!banner) return;
  if (connection.loggedOut) {
    const again = el("a", { href: "/" }, "Log in again");
    banner.replaceChildren("Not logged in (the session ended). ", again);
  } else if (connection.lostAt !== null) {
    banner.replaceChildren(
      `Connection to the bridge lost since ${when(connection.lostAt)}; retrying…`,
    );
  }
  banner.hidden = !connection.loggedOut && connection.lostAt === null;
  document.body.classList.toggle("disconnected", !banner.hidden);
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  } catch (e) {
    if (connection.lostAt === null) connection.lostAt = Date.now() / 1000;
    showConnection();
    throw new ApiError(0, "the bridge does not answer");
  }
  connection.lostAt = null;
  connection.loggedOut = response.status === 401;
  showConnection();
  if (!response.ok) throw new ApiError(response.status, await errorText(response));
  return response.json();
}

const post = (path, body) =>
  api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });

// At most one run at a time, at most one more queued, ``wait`` ms after it was asked for.
function throttled(wait, fn) {
  let timer = null;
  let running = false;
  let again = false;
  async function run() {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
    } catch (e) {
      // The bridge's answers are shown by api() (the connection banner); anything else is a bug
      // and must reach the browser's console.
      if (!(e instanceof ApiError)) throw e;
    } finally {
      running = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }
  function schedule() {
    if (timer === null) timer = setTimeout(run, wait);
  }
  return schedule;
}

async function toggle(row) {
  const eventId = row.dataset.eventId;
  if (page.open.has(eventId)) {
    page.open.delete(eventId);
    const shown = row.nextElementSibling;
    if (shown && shown.dataset.detailOf === eventId) shown.remove();
    return;
  }
  page.open.set(eventId, null);
  row.after(detailRow(eventId, null));
  let detail;
  try {
    detail = await api(`/api/events/${encodeURIComponent(eventId)}`);
  } catch (err) {
    detail = { error: err.message };
  }
  if (!page.open.has(eventId)) return;
  page.open.set(eventId, detail);
  // Looked up again, not taken from ``row``: the list may have been drawn anew meanwhile, its
  // "Loading…" row a new element under a new row.
  const shown = document.querySelector(`tr.detail-row[data-detail-of="${CSS.escape(eventId)}"]`);
  if (shown) shown.replaceWith(detailRow(eventId, detail));
}

// --- running the console -------------------------------------------------------------------

function startConsole() {
  page.showContent = document.body.dataset.showContent === "true";
  for (const t of document.querySelectorAll("time[data-ts]")) {
    t.textContent = when(Number(t.dataset.ts));
  }
  const overview = throttled(200, async () => renderOverview(await api("/api/overview")));
  const events = throttled(300, async () => {
    renderEvents((await api("/api/events")).events, page.showContent, page.open);
  });
  const dead = throttled(500, async () => renderDead((await api("/api/dead")).sinks));
  const chart = throttled(1000, async () => renderChart(await api("/api/throughput")));
  const stream = { open: false };

  function follow() {
    const source = new EventSource("/api/stream");
    source.addEventListener("open", () => {
      stream.open = true;
      events(); // what happened while it was down
      dead();
    });
    source.addEventListener("activity", (message) => {
      const a = JSON.parse(message.data);
      events();
      if (a.kind !== "accepted" && a.kind !== "duplicate") overview();
      if (a.kind === "dead" || a.kind === "delivered") dead();
      chart();
    });
    source.addEventListener("lost", () => events());
    source.addEventListener("error", () => {
      stream.open = false;
      if (source.readyState === EventSource.CLOSED) setTimeout(follow, STREAM_RETRY);
    });
  }

  overview();
  chart();
  setInterval(overview, OVERVIEW_EVERY);
  setInterval(chart, CHART_EVERY);
  setInterval(dead, DEAD_EVERY);
  setInterval(() => {
    if (!stream.open) events();
  }, POLL_EVERY);
  if (window.EventSource) follow();

  $("events-body").addEventListener("click", (e) => {
    const row = e.target.closest("tr.event");
    if (row) toggle(row);
  });
  $("events-body").addEventListener("keydown", (e) => {
    const row = e.target.closest("tr.event");
    if (row && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      toggle(row);
    }
  });
  $("dead-body").addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b) return;
    const { action, sink } = b.dataset;
    const eventId = b.dataset.eventId || null;
    const what = eventId ? `dead letter ${eventId}` : "every dead letter";
    const sure = () => window.confirm(shown(`Purge ${what} of ${sink}? This cannot be undone.`));
    if (action === "purge" && !sure()) return;
    b.disabled = true;
    try {
      const target = eventId ? { sink, event_id: eventId } : { sink };
      const answer = await post(`/api/dead/${action}`, target);
      const done = action === "retry"
        ? `${answer.retried} redriven to ${sink}`
        : `${answer.purged} purged from ${sink}`;
      deadStatus(done, false);
    } catch (err) {
      deadStatus(`${action === "retry" ? "Retry" : "Purge"} failed: ${err.message}`, true);
    } finally {
      b.disabled = false;
      dead();
      overview();
      events();
    }
  });
  const logout = $("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try {
        await post("/logout", {});
      } finally {
        window.location.replace("/");
      }
    });
  }
}

function startLogin() {
  const form = $("login");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = $("login-error");
    error.textContent = "";
    try {
      await post("/login", { token: $("token").value });
      window.location.replace("/");
    } catch (err) {
      error.textContent = err.status === 401 ? "Wrong token." : shown(err.message);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "login") startLogin();
  else startConsole();
});
