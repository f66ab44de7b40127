// eventscope's admin page in a real browser, for tests/page.rs: Debian's chromium, headless, driven by
// playwright-core (npm) over the DevTools protocol.
//
//   node page.cjs COLLECTOR_URL SIDECAR_URL SCREENSHOT.png
//
// Loads the collector's page during the demo, waits until it shows the groups and a stuck saga with a trace
// link, then checks what it shows against the JSON endpoints it reads (/api/v1/view and /sagas), fetched
// here at the same sample: every group's lag, lag seconds and status, the saga counts, every listed
// instance's trace link. Checks the sidecar's page, keyboard navigation, a terminal-sized window, that the
// page asks nothing of any other origin and logs no error. Prints a JSON summary; exits 1 on a mismatch.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_DIR + "/node_modules/playwright-core");

const [collectorUrl, sidecarUrl, screenshot] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const problems = [];
const check = (ok, what) => { if (!ok) problems.push(what); };

async function json(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// What the page shows: every table row's fields (raw values and text).
function shown() {
  const rows = (sel) => [...document.querySelectorAll(sel + " tbody tr")].map((tr) => {
    const o = { key: tr.dataset.key };
    for (const td of tr.querySelectorAll("[data-field]")) {
      o[td.dataset.field] = { value: td.dataset.value, text: td.textContent.trim() };
      const a = td.querySelector("a[href]");
      if (a) o[td.dataset.field].href = a.getAttribute("href");
    }
    return o;
  });
  return {
    takenAt: Number(document.body.dataset.takenAt),
    freshness: document.getElementById("freshness").textContent,
    stale: document.getElementById("freshness").classList.contains("stale"),
    kafka: rows("#kafka"), sagas: rows("#sagas > .scroll:first-of-type"), instances: rows("#instances"),
    topics: rows("#topics"), backlogs: rows("#backlogs"),
  };
}

const near = (a, b) => Math.abs(Number(a) - Number(b)) <= 1e-9 * Math.max(1, Math.abs(Number(b)));

// `node page.cjs routes SIDECAR_URL`: the sidecar's HTTP routes and trace context as the view reports them.
async function routes(url) {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu"] });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForSelector("#routes tbody tr", { timeout: 30000 });
    let matched = false;
    for (let attempt = 0; attempt < 20 && !matched; attempt++) {
      const view = await json(url + "api/v1/view");
      const s = await page.evaluate(() => ({
        takenAt: Number(document.body.dataset.takenAt),
        routes: [...document.querySelectorAll("#routes tbody tr")].map((tr) => ({
          key: tr.dataset.key,
          cells: Object.fromEntries([...tr.querySelectorAll("[data-field]")].map((td) => [td.dataset.field, td.textContent.trim()])),
        })),
        contexts: [...document.querySelectorAll("#http_trace_context tbody tr")].map((tr) => tr.textContent),
      }));
      if (s.takenAt !== view.taken_at_ms) { await sleep(700); continue; }
      matched = true;
      check(s.routes.length === view.routes.length, `routes shown ${s.routes.length}, view ${view.routes.length}`);
      for (const r of view.routes) {
        const row = s.routes.find((x) => x.key === [r.service, r.method, r.route].join(" "));
        if (!row) { check(false, `route ${r.route} not shown`); continue; }
        const pct = (v) => v === null ? "–" : (v * 100).toFixed(2) + " %";
        check(row.cells.availability === pct(r.availability), `${r.route}: availability "${row.cells.availability}", view ${r.availability}`);
        check(row.cells.error_rate === pct(r.error_rate), `${r.route}: error rate "${row.cells.error_rate}", view ${r.error_rate}`);
        if (r.p99_seconds !== null) {
          const over = r.p99_seconds > r.p99_target_seconds;
          check(row.cells.target.includes(over ? "over 500 ms" : "within 500 ms"), `${r.route}: target "${row.cells.target}" for p99 ${r.p99_seconds}`);
        }
      }
      check(s.contexts.length === view.http_trace_context.length && s.contexts.length > 0, "trace context rows");
    }
    check(matched, "the page never showed the sample the endpoint served");
    check(errors.length === 0, "errors in the page: " + errors.join("; "));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify({ problems }));
  process.exit(problems.length ? 1 : 0);
}

if (collectorUrl === "routes") {
  routes(sidecarUrl).catch((e) => { console.log(JSON.stringify({ problems: [String(e && e.stack || e)] })); process.exit(1); });
} else (async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const summary = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = [], foreign = [];
    const origin = new URL(collectorUrl).origin;
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("request", (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) foreign.push(r.url()); });
    await page.goto(collectorUrl);
    await page.waitForSelector("#kafka tbody tr", { timeout: 30000 });
    await page.waitForSelector("#instances a[href]", { timeout: 90000 });

    // The page and the endpoints at the same sample (the view is rebuilt every 5 s; retry until they meet).
    let matched = false;
    for (let attempt = 0; attempt < 20 && !matched; attempt++) {
      const view = await json(collectorUrl + "api/v1/view");
      const s = await page.evaluate(shown);
      if (s.takenAt !== view.taken_at_ms) { await sleep(700); continue; }
      matched = true;
      summary.groups = s.kafka.map((r) => ({ key: r.key, lag: Number(r.lag.value), status: r.status.value }));
      check(s.kafka.length === view.kafka.length, `groups shown ${s.kafka.length}, in the view ${view.kafka.length}`);
      for (const g of view.kafka) {
        const key = [g.source, g.cluster, g.consumergroup, g.topic].join("/");
        const row = s.kafka.find((r) => r.key === key);
        if (!row) { check(false, `group ${key} not shown`); continue; }
        check(near(row.lag.value, g.lag), `${key}: lag shown ${row.lag.value}, view ${g.lag}`);
        check(row.lag.text.startsWith(Math.round(g.lag).toLocaleString("en-US")), `${key}: lag text "${row.lag.text}" for ${g.lag}`);
        check(near(row.lag_seconds.value, g.lag_seconds), `${key}: lag seconds shown ${row.lag_seconds.value}, view ${g.lag_seconds}`);
        check(row.status.value === (g.status || ""), `${key}: status shown ${row.status.value}, view ${g.status}`);
        if (g.status) check(row.status.text.includes(g.status), `${key}: the status is said in words, not only in colour: "${row.status.text}"`);
        const p99 = g.consistency_window_seconds.p99;
        check(p99 === null ? row.cw_p99.value === "" : near(row.cw_p99.value, p99), `${key}: window p99 shown ${row.cw_p99.value}, view ${p99}`);
      }
      const saga = view.sagas[0];
      const sagaRow = s.sagas.find((r) => r.key === `${saga.cluster}/${saga.saga}`);
      check(!!sagaRow, "the saga row is shown");
      if (sagaRow) {
        check(near(sagaRow.stuck.value, saga.stuck), `stuck shown ${sagaRow.stuck.value}, view ${saga.stuck}`);
        check(near(sagaRow.started.value, saga.started), `started shown ${sagaRow.started.value}, view ${saga.started}`);
        check(Number(sagaRow.completed.value) === (saga.ended.completed || 0), "completed");
        summary.saga = { started: saga.started, stuck: saga.stuck, ended: saga.ended };
      }
      check(s.topics.length === view.topics.length && s.topics.length > 0, `sidecar topics shown ${s.topics.length}, view ${view.topics.length}`);
      check(!s.stale, `fresh values marked stale: ${s.freshness}`);
    }
    check(matched, "the page never showed the sample the endpoint served");

    // Every listed instance: in /sagas, with its state, and its trace link made from ui.trace_url.
    const view = await json(collectorUrl + "api/v1/view");
    const answer = await json(collectorUrl + "sagas?limit=50");
    const s = await page.evaluate(shown);
    const known = new Map(answer.sagas.map((i) => [`${i.saga}/${i.id}`, i]));
    summary.instances = s.instances.length;
    summary.trace_links = s.instances.filter((r) => r.trace_id.href).map((r) => r.trace_id.href).slice(0, 3);
    check(s.instances.length > 0, "no stuck or inconsistent instance shown");
    let compared = 0;
    for (const r of s.instances) {
      const i = known.get(r.key);
      if (!i) continue; // resolved between the page's fetch and this one
      compared++;
      check(r.state.value === i.state, `${r.key}: state ${r.state.value}, /sagas ${i.state}`);
      check(r.trace_id.value === (i.trace_id || ""), `${r.key}: trace ${r.trace_id.value}, /sagas ${i.trace_id}`);
      if (i.trace_id) check(r.trace_id.href === view.trace_url.replace("{trace_id}", i.trace_id), `${r.key}: link ${r.trace_id.href}`);
    }
    summary.instances_compared = compared;
    check(compared > 0, "no instance shown is in /sagas any more");
    await page.screenshot({ path: screenshot, fullPage: true });

    // Keyboard: the first Tab reaches the skip link, then the section links; a trace link takes focus.
    await page.keyboard.press("Tab");
    summary.first_tab = await page.evaluate(() => document.activeElement.textContent);
    check(summary.first_tab === "Skip to the tables", `first Tab: ${summary.first_tab}`);
    await page.keyboard.press("Tab");
    const second = await page.evaluate(() => document.activeElement.getAttribute("href"));
    check(second === "#kafka", `second Tab: ${second}`);
    await page.focus("#instances a[href]");
    check(await page.evaluate(() => document.activeElement.tagName === "A"), "a trace link takes keyboard focus");

    // A terminal-sized window (80 columns): the page itself does not scroll sideways, its tables do.
    await page.setViewportSize({ width: 640, height: 400 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `the page is ${overflow}px wider than a 640px window`);

    check(errors.length === 0, "errors in the page: " + errors.join("; "));
    check(foreign.length === 0, "requests outside the server: " + foreign.join(", "));

    // The sidecar's own page: its topics with rates, nothing of the collector's.
    const side = await browser.newPage();
    await side.goto(sidecarUrl);
    await side.waitForSelector("#topics tbody tr", { timeout: 30000 });
    const ss = await side.evaluate(shown);
    const sview = await json(sidecarUrl + "api/v1/view");
    check(sview.role === "sidecar", `sidecar role ${sview.role}`);
    check(ss.topics.length === sview.topics.length, `sidecar page topics ${ss.topics.length}, view ${sview.topics.length}`);
    check(ss.kafka.every((r) => r.source.value === "sidecar"), "the sidecar's page shows only the sidecar's groups");
    check(await side.evaluate(() => document.getElementById("sagas").hidden), "no saga section on the sidecar's page");
    summary.sidecar_topics = ss.topics.map((r) => r.key);
  } finally {
    await browser.close();
  }
  summary.problems = problems;
  console.log(JSON.stringify(summary));
  process.exit(problems.length ? 1 : 0);
})().catch((e) => { console.log(JSON.stringify({ problems: [String(e && e.stack || e)] })); process.exit(1); });
