// Browser tests of the buyer page and the operator dashboard: a real flashsale server
// (embedded), Debian's Chromium, driven by playwright-core. Each check fails the run.
// Screenshots go to docs/screenshots/.
//
//   node tests/browser/run.mjs        (FLASHSALE_BIN: the binary, default target/debug/flashsale)

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.FLASHSALE_BIN || join(root, "target", "debug", "flashsale");
const shots = join(root, "docs", "screenshots");
mkdirSync(shots, { recursive: true });
const ADMIN = "operator-token-for-browser-tests";
const SECRET = "buyer-token-secret-for-browser-tests-0123456789";

/** Starts `flashsale serve` on a free port; resolves to { url, stop }. */
function serve(args = []) {
  const dir = mkdtempSync(join(tmpdir(), "flashsale-browser-"));
  const child = spawn(bin, ["serve", "--listen", "127.0.0.1:0", "--store", `sqlite://${dir}/flashsale.db`,
    "--admin-token", ADMIN, "--quiet", ...args], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/flashsale listening on (http:\/\/\S+)/);
      if (m) resolve({ url: m[1], stop: () => child.kill("SIGTERM") });
    });
    child.on("exit", (code) => reject(new Error(`flashsale exited (${code}) before listening: ${out}`)));
  });
}

async function api(base, method, path, body, headers = {}) {
  const reply = await fetch(base + path, {
    method, headers: { "Content-Type": "application/json", ...headers }, body: body && JSON.stringify(body),
  });
  const text = await reply.text();
  return { status: reply.status, body: text ? JSON.parse(text) : null };
}
const asAdmin = { Authorization: "Bearer " + ADMIN };

/** Buys as a well-behaved client does: with an idempotency key, retrying a 503 (the
 *  server is busy: on a loaded machine a store commit can outlast the buyer's wait) after
 *  its `Retry-After`, up to five times; the key makes the retries one purchase. */
async function buy(base, saleId, body) {
  const key = `browser-${body.user_id}-${Date.now()}`;
  for (let attempt = 1; ; attempt++) {
    const reply = await api(base, "POST", `/api/sales/${saleId}/purchase`, body,
      { "Idempotency-Key": key });
    if (reply.status !== 503 || attempt === 5) return reply;
    await new Promise((wake) => setTimeout(wake, 1000));
  }
}

/** Types a buyer's name and presses Use: the page reloads as that buyer. */
async function useName(page, name) {
  await page.fill("#user", name);
  await Promise.all([page.waitForEvent("load"), page.click("#who button")]);
}

async function createSale(base, sale) {
  const reply = await api(base, "POST", "/api/sales", sale, asAdmin);
  assert.equal(reply.status, 201, JSON.stringify(reply.body));
  return reply.body;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const results = [];
async function check(name, body) {
  const started = Date.now();
  try {
    await body();
    results.push(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push(`FAIL ${name}: ${e.stack || e}`);
  }
  console.log(results[results.length - 1]);
}

const server = await serve();
const base = server.url;
try {
  const phone = { viewport: { width: 390, height: 844 } };

  await check("buy on the page; the order appears; the stock falls as others buy over the API", async () => {
    const sale = await createSale(base, { name: "Sneaker drop", stock: 20, per_user_limit: 1 });
    const page = await (await browser.newContext(phone)).newPage();
    await page.goto(base + "/");
    await useName(page, "alice");
    const card = page.locator(`#sale-${sale.id}`);
    await card.locator("[data-remaining]").filter({ hasText: "20" }).waitFor();
    await card.locator("button.buy").click();
    await page.locator("#orders .order-status", { hasText: "paid" }).waitFor({ timeout: 10000 });
    await card.locator(".message.ok").waitFor();
    for (let n = 0; n < 5; n++) {
      const reply = await buy(base, sale.id, { user_id: `other-${n}` });
      assert.equal(reply.status, 202, JSON.stringify(reply.body));
    }
    await card.locator("[data-remaining]").filter({ hasText: /^14$/ }).waitFor({ timeout: 5000 });
    // The same buyer again: refused by the per-buyer limit, said on the page.
    await card.locator("button.buy").click();
    await card.locator(".message.bad").waitFor({ timeout: 5000 });
    await page.screenshot({ path: join(shots, "page.png"), fullPage: true });
  });

  await check("a double click buys once", async () => {
    const sale = await createSale(base, { name: "Double click", stock: 10, per_user_limit: 5 });
    const page = await (await browser.newContext()).newPage();
    await page.goto(base + "/");
    await useName(page, "bob");
    const card = page.locator(`#sale-${sale.id}`);
    await card.locator("button.buy").dblclick();
    await card.locator(".message.ok").waitFor({ timeout: 10000 });
    await page.waitForTimeout(700);
    const after = await api(base, "GET", `/api/sales/${sale.id}`);
    assert.equal(after.body.remaining, 9, "one unit sold, not two");
  });

  let seats;
  await check("pick two seats on a seat map, buy them, see them taken in a second browser", async () => {
    const items = [];
    for (const row of ["A", "B", "C", "D"]) for (let n = 1; n <= 12; n++) items.push({ id: `${row}-${n}`, stock: 1 });
    seats = await createSale(base, { name: "Concert, hall 1", items, per_user_limit: 2 });
    const carol = await (await browser.newContext()).newPage();
    const dave = await (await browser.newContext()).newPage();
    for (const [page, name] of [[carol, "carol"], [dave, "dave"]]) {
      await page.goto(base + "/");
      await useName(page, name);
      await page.locator(`#sale-${seats.id} .seat[data-seat="C-12"]`).waitFor();
    }
    const card = carol.locator(`#sale-${seats.id}`);
    await card.locator('.seat[data-seat="B-5"]').click();
    await card.locator('.seat[data-seat="B-6"]').click();
    // A third seat is over the limit of two.
    await card.locator('.seat[data-seat="B-7"]').click();
    assert.equal(await card.locator(".seat.picked").count(), 2);
    await card.locator("button.buy", { hasText: "Buy 2 seats" }).click();
    await card.locator(".message.ok").waitFor({ timeout: 10000 });
    const other = dave.locator(`#sale-${seats.id}`);
    for (const seat of ["B-5", "B-6"]) await other.locator(`.seat.taken[data-seat="${seat}"]`).waitFor({ timeout: 5000 });
    assert.equal(await other.locator(".seat.taken").count(), 2);
    // Others take seats over the API: greyed out live too.
    const erin = await buy(base, seats.id, { user_id: "erin", items: { "A-1": 1, "A-2": 1 } });
    assert.equal(erin.status, 202, JSON.stringify(erin.body));
    await other.locator('.seat.taken[data-seat="A-2"]').waitFor({ timeout: 5000 });
    const order = await api(base, "GET", `/api/sales/${seats.id}`);
    assert.equal(order.body.remaining, 44);
    await card.screenshot({ path: join(shots, "seat-map.png") });
  });

  await check("the dashboard ends a sale and the page says so", async () => {
    const sale = await createSale(base, { name: "Ends early", stock: 50, per_user_limit: 1 });
    const buyer = await (await browser.newContext()).newPage();
    await buyer.goto(base + "/");
    await buyer.locator(`#sale-${sale.id} .sale-status`, { hasText: "On sale" }).waitFor();
    const admin = await (await browser.newContext({ viewport: { width: 1280, height: 1100 } })).newPage();
    await admin.goto(base + "/admin#token=" + ADMIN);
    // Some traffic for the charts.
    for (let n = 0; n < 30; n++) await api(base, "POST", `/api/sales/${sale.id}/purchase`, { user_id: `crowd-${n}` });
    const row = admin.locator(`tr[data-sale="${sale.id}"]`);
    await row.waitFor();
    await row.locator('button[data-action="pause"]').click();
    await buyer.locator(`#sale-${sale.id} .sale-status`, { hasText: "Paused" }).waitFor({ timeout: 5000 });
    await admin.locator(`tr[data-sale="${sale.id}"] button[data-action="resume"]`).click();
    await buyer.locator(`#sale-${sale.id} .sale-status`, { hasText: "On sale" }).waitFor({ timeout: 5000 });
    await admin.locator(`tr[data-sale="${sale.id}"] button[data-action="end"]`).click();
    await admin.locator("#control-message.ok").waitFor();
    await buyer.locator(`#sale-${sale.id} .sale-status`, { hasText: "This sale has ended" }).waitFor({ timeout: 5000 });
    assert.equal(await buyer.locator(`#sale-${sale.id} button.buy`).isDisabled(), true);
    // Create a seat grid from the form.
    await admin.selectOption("#create select[name=kind]", "seats");
    await admin.fill("#create input[name=name]", "Grid from the form");
    await admin.click("#create button[type=submit]");
    await admin.locator("#create-message.ok").waitFor();
    const created = await api(base, "GET", "/api/sales");
    const grid = created.body.find((s) => s.name === "Grid from the form");
    assert.equal(grid.items.length, 60);
    // A crowd buying for a few scrapes, for the charts.
    const crowd = await createSale(base, { name: "Crowd", stock: 400, per_user_limit: 1 });
    const until = Date.now() + 9000;
    let n = 0;
    while (Date.now() < until) {
      await Promise.all(Array.from({ length: 8 }, () =>
        api(base, "POST", `/api/sales/${crowd.id}/purchase`, { user_id: `fan-${n++}` })));
      await new Promise((r) => setTimeout(r, 40));
    }
    await admin.screenshot({ path: join(shots, "dashboard.png"), fullPage: true });
  });

  await check("a queued sale: place, ETA and progress live; a reload keeps the place; the turn brings the order; the next in line hears sold out; the dashboard shows the line and sets its rate", async () => {
    const startsAt = new Date(Date.now() + 12000).toISOString();
    const sale = await createSale(base, { name: "Line drop", stock: 3, per_user_limit: 1, starts_at: startsAt, queue: { rate: "1/s" } });
    // Two buyers join over the API first: the page's buyer is third in line.
    for (const user of ["early-1", "early-2"]) {
      const reply = await api(base, "POST", `/api/sales/${sale.id}/queue`, { user_id: user });
      assert.equal(reply.status, 202, JSON.stringify(reply.body));
    }
    const open = async (name) => {
      const page = await (await browser.newContext(phone)).newPage();
      await page.goto(base + "/");
      await useName(page, name);
      return page;
    };
    const quinn = await open("quinn");
    const card = quinn.locator(`#sale-${sale.id}`);
    await card.locator("button.buy", { hasText: "Join the line" }).click();
    await card.locator("[data-position]").filter({ hasText: /^3$/ }).waitFor({ timeout: 5000 }).catch(async (e) => { console.log(await card.innerText()); throw e; });
    await card.locator("[data-eta]").waitFor();
    // A reload keeps the place, and the button stays off: one place per buyer.
    await quinn.reload();
    await card.locator("[data-position]").filter({ hasText: /^3$/ }).waitFor({ timeout: 5000 }).catch(async (e) => { console.log(await card.innerText(), await quinn.evaluate(() => JSON.stringify(localStorage))); throw e; });
    assert.equal(await card.locator("button.buy").isDisabled(), true);
    // The fourth in line: three units, so nothing is left when their turn comes.
    const rex = await open("rex");
    const rexCard = rex.locator(`#sale-${sale.id}`);
    await rexCard.locator("button.buy").click();
    await rexCard.locator("[data-position]").filter({ hasText: /^4$/ }).waitFor({ timeout: 5000 }).catch(async (e) => { console.log(await rexCard.innerText(), Date.now() - Date.parse(startsAt)); throw e; });
    // The dashboard shows the line and sets its rate.
    const admin = await (await browser.newContext({ viewport: { width: 1280, height: 1100 } })).newPage();
    await admin.goto(base + "/admin#token=" + ADMIN);
    const row = admin.locator(`tr[data-sale="${sale.id}"]`);
    await row.locator("[data-waiting]").filter({ hasText: /^4$/ }).waitFor({ timeout: 8000 });
    await row.locator("[data-rate]").fill("2/s");
    await row.locator('button[data-action="rate"]').click();
    await admin.locator("#control-message.ok", { hasText: "2/s" }).waitFor({ timeout: 5000 });
    assert.equal((await api(base, "GET", `/api/sales/${sale.id}/queue`)).body.rate, "2/s");
    await quinn.screenshot({ path: join(shots, "line.png"), fullPage: true });
    // The sale starts: the positions the page shows never rise, and the turn brings the order.
    const seen = [];
    const deadline = Date.now() + 30000;
    while (!(await card.locator('[data-line="ordered"]').count())) {
      assert.ok(Date.now() < deadline, `no order on the page; positions seen ${seen}`);
      const shown = await card.locator("[data-position]").textContent({ timeout: 200 }).catch(() => null);
      if (shown) seen.push(Number(shown));
      await quinn.waitForTimeout(100);
    }
    for (let n = 1; n < seen.length; n++) assert.ok(seen[n] <= seen[n - 1], `a position rose: ${seen}`);
    assert.ok(seen.some((p) => p < 3), `the page never moved up the line: ${seen}`);
    await quinn.locator("#orders .order-status", { hasText: "paid" }).waitFor({ timeout: 10000 });
    // The next in line hears at once that nothing is left.
    await rexCard.locator('[data-line="closed"]').waitFor({ timeout: 10000 }).catch(async (e) => { console.log(await rexCard.innerText(), await rex.evaluate(() => JSON.stringify(localStorage)), JSON.stringify((await api(base, "GET", `/api/sales/${sale.id}/queue`)).body)); throw e; });
    await rexCard.locator(".sale-status", { hasText: "Sold out" }).waitFor({ timeout: 5000 });
    await row.locator("[data-decided]").filter({ hasText: /^3$/ }).waitFor({ timeout: 8000 });
    await row.locator("[data-closed]").filter({ hasText: /^1$/ }).waitFor();
    await admin.screenshot({ path: join(shots, "dashboard-line.png"), fullPage: true });
  });
} finally {
  server.stop();
}

// Buyer tokens on: the token comes in the URL fragment; no name field is needed.
const secured = await serve(["--auth-secret", SECRET]);
try {
  await check("with buyer tokens on, a token in the URL fragment buys", async () => {
    const sale = await createSale(secured.url, { name: "Members only", stock: 3 });
    const token = execFileSync(bin, ["token", "--user", "mallory", "--auth-secret", SECRET]).toString().trim();
    const page = await (await browser.newContext()).newPage();
    await page.goto(secured.url + "/#token=" + token);
    const card = page.locator(`#sale-${sale.id}`);
    await card.locator("button.buy").click();
    await page.locator("#orders .order-status", { hasText: "paid" }).waitFor({ timeout: 10000 });
    const orders = await api(secured.url, "GET", `/api/sales/${sale.id}`);
    assert.equal(orders.body.remaining, 2);
  });

  await check("with buyer tokens on, a token joins a line and follows the ticket to the order", async () => {
    const sale = await createSale(secured.url, { name: "Members' line", stock: 2, queue: { rate: "off" },
      starts_at: new Date(Date.now() + 3000).toISOString() });
    const token = execFileSync(bin, ["token", "--user", "trent", "--auth-secret", SECRET]).toString().trim();
    const page = await (await browser.newContext()).newPage();
    await page.goto(secured.url + "/#token=" + token);
    const card = page.locator(`#sale-${sale.id}`);
    await card.locator("button.buy", { hasText: "Join the line" }).click();
    await card.locator("[data-position]").filter({ hasText: /^1$/ }).waitFor({ timeout: 5000 });
    await card.locator('[data-line="ordered"]').waitFor({ timeout: 15000 });
    await page.locator("#orders .order-status", { hasText: "paid" }).waitFor({ timeout: 10000 });
  });
} finally {
  secured.stop();
}
await browser.close();
const failed = results.filter((r) => r.startsWith("FAIL"));
console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
