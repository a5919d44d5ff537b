// flashsale's buyer page: the sales on offer, live (Server-Sent Events), a Buy button
// with one Idempotency-Key per attempt, seat maps, the line in front of a queued sale
// (the buyer's place, ETA and progress, live), and the buyer's own orders.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const newKey = () => (crypto.randomUUID ? crypto.randomUUID()
  : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join(""));

const state = {
  user: "", token: "",
  sales: new Map(),     // id -> SaleView, kept live by the event streams
  streams: new Map(),   // id -> EventSource
  picked: new Map(),    // sale id -> Set of seat ids picked
  attempts: new Map(),  // sale id -> the Idempotency-Key of the purchase in flight
  orders: new Map(),    // order id -> OrderDetail
  messages: new Map(),  // sale id -> {text, kind}
  tickets: new Map(),   // sale id -> TicketView: the buyer's place in a queued sale's line
  firstPositions: new Map(), // ticket id -> the first position seen (the progress bar's start)
  ticketStreams: new Map(),  // ticket id -> EventSource
  polledTickets: new Set(),  // ticket ids followed by polling (one ticket has a stream)
};

// --- who is buying: a token (pasted, or in the URL fragment #token=…) or a name -------
function loadIdentity() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) sessionStorage.setItem("flashsale.token", hash.get("token"));
  state.token = sessionStorage.getItem("flashsale.token") || "";
  state.user = localStorage.getItem("flashsale.user") || "";
  $("#token").value = state.token;
  $("#user").value = state.user;
}

function saveIdentity(event) {
  event.preventDefault();
  state.token = $("#token").value.trim();
  state.user = $("#user").value.trim();
  sessionStorage.setItem("flashsale.token", state.token);
  localStorage.setItem("flashsale.user", state.user);
  // Start again as the new buyer by reloading: the streams' connections go with the old
  // document (a closed EventSource may hold its connection for a while, and a browser
  // has only 6 per server). The fragment's token is spent: the one typed wins.
  history.replaceState(null, "", location.pathname + location.search);
  location.reload();
}

const ordersKey = () => "flashsale.orders." + (state.token ? "token:" + state.token.slice(-16) : state.user);
const savedOrderIds = () => JSON.parse(localStorage.getItem(ordersKey()) || "[]");
function rememberOrder(id) {
  const ids = savedOrderIds();
  if (!ids.includes(id)) { ids.push(id); localStorage.setItem(ordersKey(), JSON.stringify(ids.slice(-50))); }
}

// A buyer's tickets, kept across reloads: a refresh or a second tab keeps the place.
const ticketsKey = () => "flashsale.tickets." + (state.token ? "token:" + state.token.slice(-16) : state.user);
const savedTickets = () => JSON.parse(localStorage.getItem(ticketsKey()) || "{}");
function rememberTicket(ticket) {
  const saved = savedTickets();
  saved[ticket.sale_id] = { ticket: ticket.ticket, first: state.firstPositions.get(ticket.ticket) || null };
  localStorage.setItem(ticketsKey(), JSON.stringify(saved));
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (state.token) h.Authorization = "Bearer " + state.token;
  return h;
}

// --- the sales ---------------------------------------------------------------------
async function start() {
  renderOrders();
  let sales = [];
  try {
    const reply = await fetch("/api/sales");
    sales = reply.ok ? await reply.json() : [];
  } catch (e) { /* offline: the streams retry */ }
  state.sales = new Map(sales.map((s) => [s.id, s]));
  renderSales();
  // A browser opens at most 6 HTTP/1.1 connections to a server, and each stream holds
  // one: the newest sales still running get streams (3), one waiting ticket gets one,
  // the others are polled, so that the buyer's own requests always find a connection.
  // (The list comes newest first.)
  const running = sales.filter((s) => s.status !== "ended");
  for (const sale of running.slice(0, MAX_SALE_STREAMS)) watch(sale.id);
  await Promise.all(savedOrderIds().map(refreshOrder));
  await Promise.all(Object.values(savedTickets()).map(resumeTicket));
  renderOrders();
}

const MAX_SALE_STREAMS = 3;

// The sales without a stream of their own, refreshed every few seconds.
async function pollUnwatched() {
  if ([...state.sales.keys()].every((id) => state.streams.has(id))) return;
  try {
    const reply = await fetch("/api/sales");
    if (!reply.ok) return;
    for (const sale of await reply.json()) {
      if (state.streams.has(sale.id) || !state.sales.has(sale.id)) continue;
      const before = state.sales.get(sale.id);
      if (before.status !== sale.status || before.remaining !== sale.remaining
          || JSON.stringify(before.items) !== JSON.stringify(sale.items)) {
        state.sales.set(sale.id, sale);
        renderSale(sale.id);
      }
    }
  } catch (e) { /* offline: the next poll retries */ }
}

function watch(id) {
  const query = state.token ? "access_token=" + encodeURIComponent(state.token)
    : state.user ? "user_id=" + encodeURIComponent(state.user) : "";
  const stream = new EventSource(`/api/sales/${encodeURIComponent(id)}/events${query ? "?" + query : ""}`);
  // The server closes an ended sale's stream: stop here, or EventSource would reconnect.
  const closeIfEnded = (status) => { if (status === "ended") { stream.close(); state.streams.delete(id); } };
  stream.addEventListener("sale", (e) => { const sale = JSON.parse(e.data); state.sales.set(id, sale); renderSale(id); closeIfEnded(sale.status); });
  stream.addEventListener("stock", (e) => { const change = JSON.parse(e.data); applyChange(id, change); closeIfEnded(change.status); });
  stream.addEventListener("order", async (e) => { await refreshOrder(JSON.parse(e.data).order_id); renderOrders(); });
  stream.addEventListener("resync", async () => { await Promise.all([...state.orders.keys()].map(refreshOrder)); renderOrders(); });
  state.streams.set(id, stream);
}

function applyChange(id, change) {
  const sale = state.sales.get(id);
  if (!sale) return;
  Object.assign(sale, { status: change.status, stock: change.stock, remaining: change.remaining, ends_at: change.ends_at });
  const byId = new Map(sale.items.map((i) => [i.id, i]));
  for (const item of change.items) Object.assign(byId.get(item.id) || {}, item);
  const picked = state.picked.get(id);
  if (picked) for (const seat of [...picked]) if (!byId.get(seat) || byId.get(seat).remaining === 0) picked.delete(seat);
  renderSale(id);
}

// A sale whose items are single seats with ids like A-12 is shown as a seat map.
const SEAT = /^([A-Za-z]+)-?(\d+)$/;
const isSeatMap = (sale) => sale.items.length > 1 && sale.items.every((i) => i.stock === 1 && SEAT.test(i.id));

function renderSales() {
  const list = $("#sales");
  list.innerHTML = state.sales.size ? "" : '<p class="muted">No sale yet. An operator creates one at <a href="/admin">/admin</a>.</p>';
  for (const id of state.sales.keys()) {
    const card = document.createElement("section");
    card.className = "card sale";
    card.id = "sale-" + id;
    list.append(card);
    renderSale(id);
  }
}

function statusLine(sale) {
  if (sale.queue && new Date(sale.queue.opens_at) > Date.now() && ["scheduled", "live"].includes(sale.status)) {
    return `The line opens in <b data-countdown="${esc(sale.queue.opens_at)}">${countdown(sale.queue.opens_at)}</b>`;
  }
  if (sale.queue && sale.status === "scheduled") {
    return `The line is open; the sale starts in <b data-countdown="${esc(sale.starts_at)}">${countdown(sale.starts_at)}</b>`;
  }
  switch (sale.status) {
    case "scheduled": return `Starts in <b data-countdown="${esc(sale.starts_at)}">${countdown(sale.starts_at)}</b>`;
    case "live": return sale.ends_at ? `On sale until ${new Date(sale.ends_at).toLocaleTimeString()}` : "On sale now";
    case "paused": return "Paused by the seller: purchases resume shortly";
    case "sold_out": return "Sold out";
    case "ended": return "This sale has ended";
    default: return esc(sale.status);
  }
}

function countdown(at) {
  const s = Math.max(0, Math.round((new Date(at) - Date.now()) / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
}

function renderSale(id) {
  const sale = state.sales.get(id);
  const card = $("#sale-" + CSS.escape(id));
  if (!sale || !card) return;
  const ticket = state.tickets.get(id);
  // A queued sale is joined from the line's opening (its tickets wait for the start);
  // one place per buyer, so the button goes once they hold a ticket.
  const open = sale.queue
    ? ["scheduled", "live"].includes(sale.status) && new Date(sale.queue.opens_at) <= Date.now() && !ticket
    : sale.status === "live";
  const pct = sale.stock ? (100 * sale.remaining / sale.stock) : 0;
  const msg = state.messages.get(id) || { text: "", kind: "" };
  let body;
  if (isSeatMap(sale)) body = seatMap(sale, open);
  else if (sale.items.length > 1) body = itemTable(sale, open);
  else body = `<button class="buy" data-buy="${esc(id)}" ${open && !state.attempts.has(id) ? "" : "disabled"}>${verb(sale)}</button>`;
  card.innerHTML = `
    <div class="row" style="justify-content:space-between">
      <h2>${esc(sale.name)}</h2><span class="status ${esc(sale.status)}">${esc(sale.status.replace("_", " "))}</span>
    </div>
    <p class="muted sale-status">${statusLine(sale)}</p>
    <div class="row"><span class="counter" data-remaining>${sale.remaining}</span>
      <span class="muted">of ${sale.stock} left · up to ${sale.per_user_limit} per buyer</span></div>
    <div class="bar"><div style="width:${pct}%"></div></div>
    ${ticket ? linePlace(ticket) : ""}
    ${body}
    <p class="message ${msg.kind}" role="status">${esc(msg.text)}</p>`;
}

const verb = (sale) => (sale.queue ? "Join the line" : "Buy");

// The buyer's place in the line: position, ETA and a progress bar while waiting (it
// runs from the first position seen to the front), then what their turn brought.
function linePlace(ticket) {
  switch (ticket.status) {
    case "waiting": {
      const first = Math.max(state.firstPositions.get(ticket.ticket) || ticket.position, ticket.position);
      const pct = Math.round((100 * (first - ticket.position + 1)) / (first + 1));
      const eta = ticket.eta_s == null ? "" : ` · about <b data-eta>${ticket.eta_s}</b> s`;
      return `<div class="line" data-line="waiting">
        <p>You are number <b data-position>${ticket.position}</b> in line${eta}</p>
        <div class="bar line-bar" role="progressbar" aria-valuenow="${pct}" aria-valuemin="0" aria-valuemax="100"><div style="width:${pct}%"></div></div></div>`;
    }
    case "decided":
      return ticket.order
        ? `<div class="line ok" data-line="ordered"><p>Your turn came: ordered!${ticket.order.status === "pending" ? " Pay before it expires." : ""}</p></div>`
        : `<div class="line bad" data-line="refused"><p>Your turn came, but: ${esc((ticket.refusal || {}).detail || "refused")}</p></div>`;
    case "timeout":
      return `<div class="line bad" data-line="timeout"><p>You waited longer than this line allows: your place expired.</p></div>`;
    case "closed":
      return `<div class="line bad" data-line="closed"><p>Sold out while you waited: nothing left to buy.</p></div>`;
    default:
      return "";
  }
}

function itemTable(sale, open) {
  const rows = sale.items.map((i) => `<tr><td>${esc(i.id)}</td><td>${i.remaining} / ${i.stock}</td>
      <td><button class="buy" data-buy="${esc(sale.id)}" data-item="${esc(i.id)}" ${open && i.remaining && !state.attempts.has(sale.id) ? "" : "disabled"}>${verb(sale)}</button></td></tr>`);
  return `<table class="items"><tr><th>Item</th><th>Left</th><th></th></tr>${rows.join("")}</table>`;
}

function seatMap(sale, open) {
  const picked = state.picked.get(sale.id) || new Set();
  const rows = new Map();
  for (const item of sale.items) {
    const [, row, n] = item.id.match(SEAT);
    if (!rows.has(row)) rows.set(row, []);
    rows.get(row).push({ item, n: Number(n) });
  }
  const ordered = [...rows.keys()].sort((a, b) => a.length - b.length || a.localeCompare(b));
  const html = ordered.map((row) => {
    const seats = rows.get(row).sort((a, b) => a.n - b.n).map(({ item }) => {
      const taken = item.remaining === 0, on = picked.has(item.id);
      return `<button class="seat${taken ? " taken" : ""}${on ? " picked" : ""}" data-seat="${esc(item.id)}"
        data-sale="${esc(sale.id)}" title="${esc(item.id)}" aria-pressed="${on}" ${taken || !open ? "disabled" : ""}>${item.id.match(SEAT)[2]}</button>`;
    }).join("");
    return `<div class="seatrow"><span class="label">${esc(row)}</span>${seats}</div>`;
  }).join("");
  const n = picked.size;
  return `<div class="seatmap">${html}</div>
    <div class="row"><span class="muted">${n} of ${sale.per_user_limit} seats picked</span>
    <button class="buy" data-buy="${esc(sale.id)}" data-seats ${open && n && !state.attempts.has(sale.id) ? "" : "disabled"}>${sale.queue ? "Join the line for" : "Buy"} ${n || ""} seat${n === 1 ? "" : "s"}</button></div>`;
}

function pickSeat(saleId, seat) {
  const sale = state.sales.get(saleId);
  const picked = state.picked.get(saleId) || new Set();
  state.picked.set(saleId, picked);
  if (picked.has(seat)) picked.delete(seat);
  else if (picked.size < sale.per_user_limit) picked.add(seat);
  else state.messages.set(saleId, { text: `At most ${sale.per_user_limit} seats per buyer`, kind: "bad" });
  renderSale(saleId);
}

// --- buying: one Idempotency-Key per attempt, so a double click or a retry buys once -
async function buy(saleId, item, seats) {
  if (state.attempts.has(saleId)) return;
  if (!state.token && !state.user) {
    state.messages.set(saleId, { text: "Enter your name (or a buyer token) above first", kind: "bad" });
    return renderSale(saleId);
  }
  const key = newKey();
  state.attempts.set(saleId, key);
  const body = {};
  if (!state.token) body.user_id = state.user;
  if (seats) body.items = Object.fromEntries([...state.picked.get(saleId)].map((s) => [s, 1]));
  else if (item) body.items = { [item]: 1 };
  const queued = Boolean((state.sales.get(saleId) || {}).queue);
  state.messages.set(saleId, { text: queued ? "Joining the line…" : "Buying…", kind: "" });
  renderSale(saleId);
  try {
    for (let attempt = 0; ; attempt++) {
      const route = queued ? "queue" : "purchase";
      const reply = await fetch(`/api/sales/${encodeURIComponent(saleId)}/${route}`, {
        method: "POST", headers: { ...headers(true), "Idempotency-Key": key }, body: JSON.stringify(body),
      });
      const answer = await reply.json().catch(() => ({}));
      // 202: a new place in the line; 200: the place this buyer already held.
      if (queued && (reply.status === 202 || reply.status === 200)) {
        if (seats) state.picked.delete(saleId);
        state.messages.set(saleId, { text: reply.status === 202 ? "You are in line." : "You were in line already.", kind: "ok" });
        takeTicket(answer);
        break;
      }
      if (reply.status === 202) {
        state.orders.set(answer.id, answer);
        rememberOrder(answer.id);
        if (seats) state.picked.delete(saleId);
        state.messages.set(saleId, { text: `Ordered! ${answer.status === "pending" ? "Pay before it expires." : ""}`, kind: "ok" });
        await refreshOrder(answer.id);
        break;
      }
      // The same key again: the engine answers what the first attempt got.
      if ((reply.status === 503 || answer.code === "request_in_progress") && attempt < 3) {
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
        continue;
      }
      state.messages.set(saleId, { text: answer.detail || `Refused (${reply.status})`, kind: "bad" });
      break;
    }
  } catch (e) {
    state.messages.set(saleId, { text: "Network error: try again", kind: "bad" });
  } finally {
    state.attempts.delete(saleId);
    renderSale(saleId);
    renderOrders();
  }
}

// --- the line: the buyer's ticket, followed live ----------------------------------
function takeTicket(ticket) {
  if (ticket.status === "waiting" && !state.firstPositions.has(ticket.ticket)) state.firstPositions.set(ticket.ticket, ticket.position);
  state.tickets.set(ticket.sale_id, ticket);
  rememberTicket(ticket);
  if (ticket.order) {
    state.orders.set(ticket.order.id, ticket.order);
    rememberOrder(ticket.order.id);
    renderOrders();
  }
  renderSale(ticket.sale_id);
  if (ticket.status === "waiting") followTicket(ticket.ticket);
  else closeTicketStream(ticket.ticket);
}

function followTicket(id) {
  if (state.ticketStreams.has(id)) return;
  if (state.ticketStreams.size >= MAX_TICKET_STREAMS) return void state.polledTickets.add(id);
  const query = state.token ? "?access_token=" + encodeURIComponent(state.token) : "";
  const stream = new EventSource(`/api/tickets/${encodeURIComponent(id)}/events${query}`);
  stream.addEventListener("ticket", (e) => takeTicket(JSON.parse(e.data)));
  state.ticketStreams.set(id, stream);
}

// The server ends a decided ticket's stream: close it here, or EventSource reconnects.
function closeTicketStream(id) {
  const stream = state.ticketStreams.get(id);
  if (stream) stream.close();
  state.ticketStreams.delete(id);
  state.polledTickets.delete(id);
}

const MAX_TICKET_STREAMS = 1;

async function pollTickets() {
  for (const id of [...state.polledTickets]) {
    try {
      const reply = await fetch(`/api/tickets/${encodeURIComponent(id)}`, { headers: headers(false) });
      if (reply.ok) takeTicket(await reply.json());
    } catch (e) { /* offline: the next poll retries */ }
  }
}

async function resumeTicket({ ticket: id, first }) {
  try {
    const reply = await fetch(`/api/tickets/${encodeURIComponent(id)}`, { headers: headers(false) });
    if (!reply.ok) return;
    if (first) state.firstPositions.set(id, first);
    takeTicket(await reply.json());
  } catch (e) { /* offline: the buyer may reload */ }
}

// --- the buyer's own orders ---------------------------------------------------------
async function refreshOrder(id) {
  try {
    const reply = await fetch(`/api/orders/${encodeURIComponent(id)}`, { headers: headers(false) });
    if (reply.ok) state.orders.set(id, await reply.json());
  } catch (e) { /* kept as it was */ }
}

async function cancelOrder(id) {
  const reply = await fetch(`/api/orders/${encodeURIComponent(id)}/cancel`, { method: "POST", headers: headers(false) });
  if (reply.ok) state.orders.set(id, await reply.json());
  renderOrders();
}

function renderOrders() {
  const orders = [...state.orders.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  $("#orders").innerHTML = orders.length ? `<table><tr><th>Order</th><th>Sale</th><th>Items</th><th>Status</th><th></th></tr>${
    orders.map((o) => `<tr data-order="${esc(o.id)}"><td title="${esc(o.id)}">${esc(o.id.slice(-8))}</td>
      <td>${esc((state.sales.get(o.sale_id) || {}).name || o.sale_id.slice(-8))}</td>
      <td>${esc(Object.entries(o.items || {}).map(([k, v]) => (k === "default" ? "" : k + " ") + "×" + v).join(", "))}</td>
      <td class="order-status">${esc(o.status)}</td>
      <td>${o.status === "pending" ? `<button data-cancel="${esc(o.id)}">Cancel</button>` : ""}</td></tr>`).join("")}</table>`
    : '<p class="muted">No order yet.</p>';
}

// --- wiring -------------------------------------------------------------------------
document.addEventListener("click", (e) => {
  const el = e.target.closest("button");
  if (!el) return;
  if (el.dataset.seat) pickSeat(el.dataset.sale, el.dataset.seat);
  else if (el.dataset.buy) buy(el.dataset.buy, el.dataset.item, "seats" in el.dataset);
  else if (el.dataset.cancel) cancelOrder(el.dataset.cancel);
});
setInterval(() => {
  for (const el of document.querySelectorAll("[data-countdown]")) el.textContent = countdown(el.dataset.countdown);
  // A scheduled sale opens on its own: its stream says so within a poll. A line opens
  // on its own too, and no event says so: redraw its sale when the time comes.
  for (const sale of state.sales.values()) {
    if (sale.queue && !sale.lineOpen && new Date(sale.queue.opens_at) <= Date.now()) {
      sale.lineOpen = true;
      renderSale(sale.id);
    }
  }
}, 1000);
setInterval(pollUnwatched, 3000);
setInterval(pollTickets, 2000);
$("#who").addEventListener("submit", saveIdentity);
loadIdentity();
start();
