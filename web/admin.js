// flashsale's operator dashboard: live charts from /metrics, creating sales (one item,
// several, or a seat grid; direct or through a line), and the controls of a running
// sale (end, pause, resume, stock, and a queued sale's line: its figures and its rate).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
let token = "";

function loadToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) sessionStorage.setItem("flashsale.admin", hash.get("token"));
  token = sessionStorage.getItem("flashsale.admin") || "";
  $("#admin-token").value = token;
}
$("#who").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#admin-token").value.trim();
  sessionStorage.setItem("flashsale.admin", token);
  loadSales();
});
const adminHeaders = () => ({ "Content-Type": "application/json", ...(token ? { Authorization: "Bearer " + token } : {}) });

// --- sales and their controls --------------------------------------------------------
let sales = [];
async function loadSales() {
  const reply = await fetch("/api/sales");
  if (!reply.ok) return;
  sales = await reply.json();
  const lines = new Map(await Promise.all(sales.filter((s) => s.queue).map(async (s) => {
    const line = await fetch(`/api/sales/${encodeURIComponent(s.id)}/queue`).then((r) => (r.ok ? r.json() : null)).catch(() => null);
    return [s.id, line];
  })));
  $("#sales").innerHTML = sales.length ? `<table><tr><th>Sale</th><th>Status</th><th>Left</th><th>Line</th><th>Controls</th></tr>${
    sales.map((s) => `<tr data-sale="${esc(s.id)}"><td>${esc(s.name)}<div class="muted">${esc(s.id)}</div></td>
      <td><span class="status ${esc(s.status)}">${esc(s.status.replace("_", " "))}</span></td>
      <td>${s.remaining} / ${s.stock}</td>
      <td>${lineCell(s, lines.get(s.id))}</td>
      <td class="row">
        <button data-action="end" data-id="${esc(s.id)}" ${s.status === "ended" ? "disabled" : ""}>End now</button>
        ${s.status === "paused" ? `<button data-action="resume" data-id="${esc(s.id)}">Resume</button>`
          : `<button data-action="pause" data-id="${esc(s.id)}" ${s.status === "ended" ? "disabled" : ""}>Pause</button>`}
        <input type="number" min="1" value="10" style="width:5rem" aria-label="Units to add" data-units="${esc(s.id)}">
        ${s.items.length > 1 ? `<select data-item="${esc(s.id)}">${s.items.map((i) => `<option>${esc(i.id)}</option>`).join("")}</select>` : ""}
        <button data-action="stock" data-id="${esc(s.id)}" ${s.status === "ended" ? "disabled" : ""}>Add stock</button>
      </td></tr>`).join("")}</table>` : '<p class="muted">No sale yet.</p>';
}

// A queued sale's line: waiting, decided, decisions per second, and its rate, live.
function lineCell(sale, line) {
  if (!sale.queue) return '<span class="muted">direct</span>';
  if (!line) return '<span class="muted">…</span>';
  return `<div data-line-figures><b data-waiting>${line.waiting}</b> waiting · <b data-decided>${line.decided}</b> decided
      · ${line.decided_per_s == null ? "–" : line.decided_per_s}/s${line.timed_out ? ` · ${line.timed_out} timed out` : ""}
      ${line.closed ? ` · <b data-closed>${line.closed}</b> told sold out` : ""}</div>
    <div class="row"><span class="muted">rate</span>
      <input value="${esc(line.rate)}" style="width:5.5rem" aria-label="Line rate" data-rate="${esc(sale.id)}">
      <button data-action="rate" data-id="${esc(sale.id)}">Set rate</button></div>`;
}

async function control(id, action) {
  if (action === "rate") return setRate(id);
  const body = {};
  if (action === "stock") {
    body.units = Number($(`[data-units="${CSS.escape(id)}"]`).value);
    const item = $(`[data-item="${CSS.escape(id)}"]`);
    if (item) body.item = item.value;
  }
  const reply = await fetch(`/api/sales/${encodeURIComponent(id)}/${action}`, { method: "POST", headers: adminHeaders(), body: JSON.stringify(body) });
  const answer = await reply.json().catch(() => ({}));
  const message = $("#control-message");
  message.className = "message " + (reply.ok ? "ok" : "bad");
  message.textContent = reply.ok ? `${action}: done (${answer.status})` : `${action}: ${answer.detail || reply.status}`;
  loadSales();
}

async function setRate(id) {
  const rate = $(`[data-rate="${CSS.escape(id)}"]`).value.trim();
  const reply = await fetch(`/api/sales/${encodeURIComponent(id)}/queue/rate`, { method: "POST", headers: adminHeaders(), body: JSON.stringify({ rate }) });
  const answer = await reply.json().catch(() => ({}));
  const message = $("#control-message");
  message.className = "message " + (reply.ok ? "ok" : "bad");
  message.textContent = reply.ok ? `rate: now ${answer.rate}` : `rate: ${answer.detail || reply.status}`;
  loadSales();
}

document.addEventListener("click", (e) => {
  const el = e.target.closest("button[data-action]");
  if (el) control(el.dataset.id, el.dataset.action);
});

// --- creating a sale -----------------------------------------------------------------
function showKindFields() {
  const kind = $("#create").kind.value;
  for (const el of document.querySelectorAll("[data-for]")) el.hidden = el.dataset.for !== kind;
}
$("#create").kind.addEventListener("change", showKindFields);
$("#create").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const sale = { name: f.name.value, per_user_limit: Number(f.per_user_limit.value) };
  if (f.kind.value === "single") sale.stock = Number(f.stock.value);
  if (f.kind.value === "items") {
    sale.items = f.items.value.split(",").map((p) => p.trim()).filter(Boolean)
      .map((p) => { const [id, stock] = p.split(":"); return { id: id.trim(), stock: Number(stock) }; });
  }
  if (f.kind.value === "seats") {
    sale.items = [];
    for (let r = 0; r < Number(f.rows.value); r++) {
      const row = String.fromCharCode(65 + r);
      for (let n = 1; n <= Number(f.seats.value); n++) sale.items.push({ id: `${row}-${n}`, stock: 1 });
    }
  }
  const startsIn = Number(f.starts_in.value), lasts = Number(f.lasts.value);
  const start = Date.now() + startsIn * 1000;
  if (startsIn > 0) sale.starts_at = new Date(start).toISOString();
  if (lasts > 0) sale.ends_at = new Date(start + lasts * 60000).toISOString();
  if (Number(f.payment_window.value) > 0) sale.payment_window = Number(f.payment_window.value);
  if (f.queued.checked) sale.queue = { rate: f.line_rate.value.trim() || "off" };
  const reply = await fetch("/api/sales", { method: "POST", headers: adminHeaders(), body: JSON.stringify(sale) });
  const answer = await reply.json().catch(() => ({}));
  const message = $("#create-message");
  message.className = "message " + (reply.ok ? "ok" : "bad");
  message.textContent = reply.ok ? `Created ${answer.name} (${answer.id})` : answer.detail || `Refused (${reply.status})`;
  loadSales();
});

// --- live charts from /metrics -------------------------------------------------------
function parseMetrics(text) {
  const series = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    series.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return series;
}
const sum = (series, name, filter = () => true) => series.filter((s) => s.name === name && filter(s.labels)).reduce((a, s) => a + s.value, 0);

const HISTORY = 90;
const charts = { rate: [], p99: [], lag: [], dlq: [], waiting: [], outcomes: new Map(), remaining: new Map() };
let previous = null;

function push(list, value) { list.push(value); if (list.length > HISTORY) list.shift(); }

function p99(now, before) {
  const buckets = (series) => series.filter((s) => s.name === "flashsale_purchase_duration_seconds_bucket")
    .map((s) => [s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), s.value]).sort((a, b) => a[0] - b[0]);
  const a = buckets(now), b = new Map(buckets(before));
  const total = a.length ? a[a.length - 1][1] - (b.get(Infinity) || 0) : 0;
  if (total <= 0) return 0;
  for (const [le, count] of a) if (count - (b.get(le) || 0) >= 0.99 * total) return le === Infinity ? 10000 : le * 1000;
  return 0;
}

async function scrape() {
  let text;
  try { text = await (await fetch("/metrics")).text(); } catch (e) { return; }
  const now = { at: Date.now(), series: parseMetrics(text) };
  if (previous) {
    const dt = (now.at - previous.at) / 1000;
    const outcomes = (m) => new Map(m.series.filter((s) => s.name === "flashsale_purchases_total").map((s) => [s.labels.outcome, s.value]));
    const a = outcomes(now), b = outcomes(previous);
    push(charts.rate, (sum(now.series, "flashsale_purchases_total") - sum(previous.series, "flashsale_purchases_total")) / dt);
    for (const [code, v] of a) {
      if (!charts.outcomes.has(code)) charts.outcomes.set(code, []);
      push(charts.outcomes.get(code), (v - (b.get(code) || 0)) / dt);
    }
    push(charts.p99, p99(now.series, previous.series));
  }
  push(charts.lag, sum(now.series, "flashsale_bus_lag_orders"));
  push(charts.dlq, sum(now.series, "flashsale_dlq_orders"));
  push(charts.waiting, sum(now.series, "flashsale_line_waiting_tickets"));
  const names = new Map(sales.map((s) => [s.id, s.name]));
  for (const s of now.series.filter((s) => s.name === "flashsale_sale_remaining_units")) {
    const label = names.get(s.labels.sale) || s.labels.sale.slice(-6);
    if (!charts.remaining.has(label)) charts.remaining.set(label, []);
    push(charts.remaining.get(label), s.value);
  }
  previous = now;
  draw("#chart-rate", [["purchases/s", charts.rate]]);
  draw("#chart-outcomes", [...charts.outcomes], "#legend-outcomes");
  draw("#chart-remaining", [...charts.remaining].slice(0, 6));
  draw("#chart-p99", [["p99 ms", charts.p99]]);
  draw("#chart-lag", [["lag", charts.lag]]);
  draw("#chart-dlq", [["dead letters", charts.dlq]]);
  draw("#chart-waiting", [["waiting", charts.waiting]]);
}

const COLORS = ["#d9480f", "#1c7ed6", "#2b8a3e", "#ae3ec9", "#f08c00", "#0ca678", "#c92a2a"];
function draw(selector, lines, legend) {
  const canvas = $(selector);
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio), h = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const ctx = canvas.getContext("2d");
  const max = Math.max(1, ...lines.flatMap(([, v]) => v));
  ctx.font = `${11 * devicePixelRatio}px system-ui`;
  ctx.fillStyle = "#667085";
  ctx.fillText(max.toFixed(max < 10 ? 1 : 0), 4, 12 * devicePixelRatio);
  lines.forEach(([, values], i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2 * devicePixelRatio;
    ctx.beginPath();
    // The newest value at the right edge.
    const offset = HISTORY - values.length;
    values.forEach((v, x) => {
      const px = ((x + offset) / (HISTORY - 1)) * w, py = h - (v / max) * (h - 16 * devicePixelRatio) - 2;
      x ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
    });
    ctx.stroke();
  });
  if (legend) $(legend).innerHTML = lines.map(([name, v], i) => `<span style="color:${COLORS[i % COLORS.length]}">■ ${esc(name)} ${(v[v.length - 1] || 0).toFixed(1)}</span>`).join(" · ");
}

loadToken();
showKindFields();
loadSales();
scrape();
setInterval(scrape, 2000);
setInterval(loadSales, 5000);
