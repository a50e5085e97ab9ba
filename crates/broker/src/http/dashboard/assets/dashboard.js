// The Makelaar dashboard. No framework and no build step: served as is by the broker.
//
// Everything shown comes from clients (client ids, topics, payloads, usernames) and is
// attacker-controlled: it only ever reaches the page through textContent and attributes set
// with setAttribute/dataset, never through innerHTML. The server's Content-Security-Policy
// forbids inline scripts as a second line.
"use strict";

const CSRF_HEADER = { "X-Makelaar-Dashboard": "1" };
const CHART_POINTS = 300; // five minutes at one sample per second
const PAGE = 100;

// ---- small DOM helpers -------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

/** An element with text content (never parsed as HTML) and optional class. */
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function td(text, cls) { return el("td", text === null || text === undefined ? "–" : text, cls); }

function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (n >= 100 || Number.isInteger(n)) return Math.round(n).toLocaleString("en");
  return String(Number(n.toFixed(n < 1 ? 2 : 1)));
}

function fmtDuration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = secs % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function fmtSince(ms) {
  if (!ms) return "–";
  return fmtDuration((Date.now() - ms) / 1000) + " ago";
}

function fmtTime(ms) {
  const t = new Date(ms);
  return t.toLocaleTimeString("en-GB", { hour12: false }) + "." +
    String(t.getMilliseconds()).padStart(3, "0");
}

async function api(path, options) {
  const resp = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (!resp.ok) {
    const text = await resp.text();
    throw new Error(`${resp.status}: ${text.trim()}`);
  }
  return resp.json();
}

// ---- charts ------------------------------------------------------------------------------

/** A line chart on a canvas, drawn by hand: a few series over the last CHART_POINTS samples. */
class Chart {
  constructor(canvas, series) {
    this.canvas = canvas;
    this.series = series.map((s) => ({ color: s.color, values: [] }));
  }

  push(values) {
    values.forEach((v, i) => {
      const s = this.series[i];
      s.values.push(v);
      if (s.values.length > CHART_POINTS) s.values.shift();
    });
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth || c.width, h = c.clientHeight || c.height;
    if (c.width !== Math.round(w * ratio)) { c.width = Math.round(w * ratio); c.height = Math.round(h * ratio); }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 44, right = 8, top = 8, bottom = 18;
    const pw = w - left - right, ph = h - top - bottom;
    let max = 0;
    for (const s of this.series) for (const v of s.values) max = Math.max(max, v);
    const scale = niceMax(max);
    // Grid and labels.
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#6b7785";
    g.strokeStyle = "#e6eaef";
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(left, Math.round(y) + 0.5); g.lineTo(left + pw, Math.round(y) + 0.5); g.stroke();
      g.fillText(fmtNum((scale * i) / 4), left - 6, y);
    }
    g.textAlign = "left";
    g.textBaseline = "alphabetic";
    g.fillText("5 min", left, h - 4);
    g.textAlign = "right";
    g.fillText("now", left + pw, h - 4);
    // Series: newest at the right edge.
    for (const s of this.series) {
      const n = s.values.length;
      if (n === 0) continue;
      const x = (i) => left + pw - ((n - 1 - i) * pw) / (CHART_POINTS - 1);
      const y = (v) => top + ph - (ph * v) / scale;
      g.beginPath();
      s.values.forEach((v, i) => (i === 0 ? g.moveTo(x(i), y(v)) : g.lineTo(x(i), y(v))));
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.stroke();
      g.lineTo(x(n - 1), top + ph);
      g.lineTo(x(0), top + ph);
      g.closePath();
      g.globalAlpha = 0.12;
      g.fillStyle = s.color;
      g.fill();
      g.globalAlpha = 1;
    }
  }
}

/** A round upper bound for the y axis: four grid steps of 1, 2, 2.5 or 5 × 10^k. */
function niceMax(max) {
  const step = Math.max(max, 1) / 4;
  const p = Math.pow(10, Math.floor(Math.log10(step)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= step) return 4 * m * p;
  return 40 * p;
}

// ---- live figures ------------------------------------------------------------------------

const charts = {
  connections: new Chart($("chart-connections"), [{ color: "#1f6feb" }]),
  messages: new Chart($("chart-messages"), [{ color: "#1f6feb" }, { color: "#e8590c" }]),
};
let previous = null;

function showStats(s) {
  $("stat-connected").textContent = fmtNum(s.clients_connected);
  $("stat-sessions").textContent = fmtNum(s.sessions);
  $("stat-subscriptions").textContent = fmtNum(s.subscriptions);
  $("stat-retained").textContent = fmtNum(s.retained);
  $("uptime").textContent = `version ${s.version} · up ${fmtDuration(s.uptime_secs)}`;
  let rateIn = 0, rateOut = 0;
  if (previous && s.time_ms > previous.time_ms) {
    const dt = (s.time_ms - previous.time_ms) / 1000;
    rateIn = Math.max(0, s.messages_received - previous.messages_received) / dt;
    rateOut = Math.max(0, s.messages_sent - previous.messages_sent) / dt;
  }
  if (previous) {
    $("stat-in-rate").textContent = fmtNum(rateIn);
    $("stat-out-rate").textContent = fmtNum(rateOut);
    charts.messages.push([rateIn, rateOut]);
  }
  charts.connections.push([s.clients_connected]);
  previous = s;
}

function startEvents() {
  const live = $("live");
  const events = new EventSource("/api/events");
  events.addEventListener("stats", (e) => {
    live.textContent = "live";
    live.className = "live on";
    showStats(JSON.parse(e.data));
  });
  events.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  };
}

// ---- tables ------------------------------------------------------------------------------

/** A paged, searchable table refreshed from /api/NAME. */
class Table {
  constructor(name, row, every) {
    this.name = name;
    this.row = row;
    this.offset = 0;
    this.total = 0;
    this.body = $(`${name}-table`).querySelector("tbody");
    this.search = $(`${name}-search`);
    this.search.addEventListener("input", () => { this.offset = 0; this.refresh(); });
    $(`${name}-prev`).addEventListener("click", () => { this.offset = Math.max(0, this.offset - PAGE); this.refresh(); });
    $(`${name}-next`).addEventListener("click", () => {
      if (this.offset + PAGE < this.total) { this.offset += PAGE; this.refresh(); }
    });
    this.busy = false;
    // Each list costs the broker a walk over every session: not while nobody looks, and
    // never two at once.
    setInterval(() => { if (!document.hidden) this.refresh(); }, every);
    this.refresh();
  }

  async refresh() {
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    try {
      do { this.again = false; await this.load(); } while (this.again);
    } finally { this.busy = false; }
  }

  async load() {
    const q = new URLSearchParams({ offset: this.offset, limit: PAGE });
    if (this.search.value) q.set("q", this.search.value);
    const errorBox = $(`${this.name}-error`);
    let page;
    try {
      page = await api(`/api/${this.name}?${q}`);
    } catch (e) {
      if (errorBox) { errorBox.textContent = String(e.message); errorBox.hidden = false; }
      return;
    }
    if (errorBox) errorBox.hidden = true;
    this.total = page.total;
    const rows = page.items.map((item) => this.row(item));
    this.body.replaceChildren(...rows);
    const first = page.items.length ? page.offset + 1 : 0;
    $(`${this.name}-range`).textContent = `${first}–${page.offset + page.items.length} of ${page.total}`;
  }
}

const clients = new Table("clients", (c) => {
  const tr = el("tr", null, c.online ? "online" : "offline");
  tr.dataset.clientId = c.client_id;
  tr.append(
    td(c.client_id, "client-id"),
    td(c.address, "address"),
    td(c.protocol, "protocol"),
    td(c.keep_alive === 0 ? "off" : `${c.keep_alive} s`, "keep-alive num"),
    td(c.queued, "queued num"),
    td(c.inflight, "inflight num"),
    td(c.username, "username"),
    td(fmtSince(c.since_ms), "since"),
    td(c.online ? "online" : "offline", c.online ? "status status-online" : "status status-offline"),
  );
  const cell = el("td");
  if (c.online) {
    const b = el("button", "Disconnect", "disconnect");
    b.type = "button";
    b.setAttribute("aria-label", "disconnect " + c.client_id);
    b.addEventListener("click", () => disconnect(c.client_id, b));
    cell.append(b);
  }
  tr.append(cell);
  tr.firstChild.title = c.client_id;
  return tr;
}, 2000);

// ---- bridges -----------------------------------------------------------------------------

/** Drops by reason, the non-zero ones, e.g. "queue_full 3, max_age 1"; "none" without. */
function fmtDrops(dropped) {
  const parts = Object.keys(dropped).filter((k) => dropped[k] > 0).map((k) => `${k} ${fmtNum(dropped[k])}`);
  return parts.length ? parts.join(", ") : "none";
}

function bridgeRow(b) {
  const tr = el("tr", null, b.state === "connected" ? "online" : "offline");
  tr.dataset.bridge = b.name;
  tr.append(
    td(b.name, "bridge-name"),
    td(b.state, b.state === "connected" ? "state status status-online" : "state status status-offline"),
    td(b.address || null, "address"),
    td(fmtNum(b.queued), "queued num"),
    td(fmtNum(b.queued_bytes), "queued-bytes num"),
    td(b.oldest_queued_secs === null ? null : fmtDuration(b.oldest_queued_secs), "oldest"),
    td(fmtNum(b.inflight), "inflight num"),
    td(fmtNum(b.forwarded_out), "out num"),
    td(fmtNum(b.forwarded_in), "in num"),
    td(fmtNum(b.connects), "connects num"),
    td(b.last_error || null, "last-error"),
    td(fmtDrops(b.dropped), "dropped"),
  );
  return tr;
}

let bridgesBusy = false;
async function refreshBridges() {
  if (bridgesBusy || document.hidden) return;
  bridgesBusy = true;
  const errorBox = $("bridges-error");
  try {
    const list = await api("/api/bridges");
    errorBox.hidden = true;
    $("bridges").hidden = list.length === 0;
    $("bridges-table").querySelector("tbody").replaceChildren(...list.map(bridgeRow));
  } catch (e) {
    errorBox.textContent = String(e.message);
    errorBox.hidden = false;
  } finally {
    bridgesBusy = false;
  }
}
setInterval(refreshBridges, 2000);
refreshBridges();

// ---- cluster -----------------------------------------------------------------------------

function clusterRow(c) {
  const serving = c.state === "serving";
  const tr = el("tr", null, serving ? "online" : "offline");
  const lag = c.partitions.reduce((sum, p) => sum + p.follow_lag, 0);
  tr.append(
    td(c.node, "node"),
    td(c.state, serving ? "state status status-online" : "state status status-offline"),
    td(fmtNum(c.nodes_alive), "nodes-alive num"),
    td(c.round_trip_ms === null ? null : `${c.round_trip_ms.toFixed(2)} ms`, "round-trip"),
    td(fmtNum(c.appends), "appends num"),
    td(fmtNum(c.append_failures), "append-failures num"),
    td(fmtNum(c.published), "published num"),
    td(fmtNum(c.claims), "claims num"),
    td(`${fmtNum(c.handovers_asked)} / ${fmtNum(c.handovers_given)}`, "handovers num"),
    td(`${fmtNum(c.queued)} / ${fmtNum(c.queue_limit)}`, "queued num"),
    td(fmtNum(lag), "follow-lag num"),
  );
  return tr;
}

function partitionRow(p, i) {
  const tr = el("tr");
  tr.append(
    td(String(i), "partition"),
    td(fmtNum(p.appended_sequence), "appended num"),
    td(fmtNum(p.followed_sequence), "followed-seq num"),
    td(fmtNum(p.follow_lag), "follow-lag num"),
    td(fmtNum(p.followed), "followed num"),
  );
  return tr;
}

let clusterBusy = false;
async function refreshCluster() {
  if (clusterBusy || document.hidden) return;
  clusterBusy = true;
  const errorBox = $("cluster-error");
  try {
    const c = await api("/api/cluster");
    errorBox.hidden = true;
    // A broker running alone has no cluster panel.
    $("cluster").hidden = c === null;
    if (c !== null) {
      $("cluster-summary").textContent = `this node: ${c.node}, queue full ${fmtNum(c.queue_full)} times`;
      $("cluster-table").querySelector("tbody").replaceChildren(clusterRow(c));
      $("cluster-partitions").querySelector("tbody").replaceChildren(...c.partitions.map(partitionRow));
    }
  } catch (e) {
    errorBox.textContent = String(e.message);
    errorBox.hidden = false;
  } finally {
    clusterBusy = false;
  }
}
setInterval(refreshCluster, 2000);
refreshCluster();

async function disconnect(clientId, button) {
  button.disabled = true;
  try {
    await api(`/api/clients/${encodeURIComponent(clientId)}/disconnect`, {
      method: "POST",
      headers: CSRF_HEADER,
    });
  } catch (e) {
    const box = $("clients-error");
    box.textContent = `cannot disconnect ${clientId}: ${e.message}`;
    box.hidden = false;
  }
  clients.refresh();
}

function subscriptionOptions(s) {
  const o = [];
  if (s.no_local) o.push("no-local");
  if (s.retain_as_published) o.push("retain-as-published");
  if (s.retain_handling) o.push(`retain-handling ${s.retain_handling}`);
  return o.join(", ");
}

new Table("subscriptions", (s) => {
  const tr = el("tr", null, s.online ? "online" : "offline");
  tr.append(td(s.client_id), td(s.filter, "filter"), td(s.qos, "num"), td(subscriptionOptions(s)),
    td(s.identifier), td(s.online ? "online" : "offline"));
  return tr;
}, 10000);

new Table("retained", (r) => {
  const tr = el("tr");
  tr.append(td(r.topic, "topic"), td(r.size, "num"), td(r.qos, "num"),
    td(r.expires_in_secs === null ? "never" : fmtDuration(r.expires_in_secs)));
  return tr;
}, 10000);

// ---- topic viewer ------------------------------------------------------------------------

const MAX_SHOWN = 500;
let watch = null;

function showMessage(m) {
  const li = el("li");
  li.append(
    el("span", fmtTime(m.time_ms), "time"),
    el("span", m.topic, "topic"),
    el("span", `q${m.qos}${m.retain ? " r" : ""}${m.replay ? " ↺" : ""}`, "meta"),
  );
  li.lastChild.title = m.replay ? "retained message, sent when the watch began" : "";
  let text = m.payload;
  if (m.truncated) text += ` … (${m.size} bytes)`;
  const payload = el("span", text, m.encoding === "utf8" ? "payload" : "payload binary");
  if (m.encoding !== "utf8") payload.title = `binary payload, shown as ${m.encoding}`;
  li.append(payload);
  li.dataset.topic = m.topic;
  const list = $("watch-messages");
  list.prepend(li);
  while (list.childElementCount > MAX_SHOWN) list.lastElementChild.remove();
}

function stopWatch(status) {
  if (watch) watch.close();
  watch = null;
  $("watch-start").disabled = false;
  $("watch-stop").disabled = true;
  if (status !== undefined) $("watch-status").textContent = status;
}

function startWatch(filter) {
  stopWatch();
  const source = new EventSource("/api/watch?" + new URLSearchParams({ filter }));
  watch = source;
  $("watch-start").disabled = true;
  $("watch-stop").disabled = false;
  $("watch-status").textContent = `watching ${filter}`;
  source.addEventListener("watching", () => { $("watch-status").textContent = `watching ${filter}`; });
  source.addEventListener("message", (e) => showMessage(JSON.parse(e.data)));
  source.addEventListener("dropped", (e) => {
    const d = JSON.parse(e.data);
    $("watch-status").textContent = `watching ${filter} · ${d.dropped} messages dropped (too many to show)`;
  });
  source.addEventListener("refused", (e) => stopWatch(`cannot watch ${filter}: ${JSON.parse(e.data).error}`));
  source.onerror = () => {
    if (watch === source) $("watch-status").textContent = `watching ${filter} · reconnecting…`;
  };
}

$("watch-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const filter = $("watch-filter").value;
  if (filter) startWatch(filter);
});
$("watch-stop").addEventListener("click", () => stopWatch("stopped"));
$("watch-clear").addEventListener("click", () => $("watch-messages").replaceChildren());

startEvents();
window.addEventListener("resize", () => { charts.connections.draw(); charts.messages.draw(); });
