// The SDK in headless Chromium through node kills: for an embedded node and for a 3-node
// cluster behind the test balancer (both started by the chorus-testbed binary), two pages
// (alice, bob; separate browser contexts) import /sdk/chorus.js from the node, join a room,
// and alice sends 200 messages with 20 in flight (sendWindow 20). Mid-stream the node
// (embedded) or the room's owner node (cluster) is SIGKILLed and started again. Then: every
// send was acked once with distinct seqs 1..200, both pages got every seq once, in order,
// without a gap, and the server's history (HTTP API) holds each body once.
// Run by tests/browser/run (CHORUS_TESTBED: the testbed binary).
const { chromium } = require('playwright-core');
const { spawn } = require('node:child_process');
const readline = require('node:readline');
const path = require('node:path');

const TESTBED = process.env.CHORUS_TESTBED || path.join(__dirname, '../../target/debug/chorus-testbed');
const SENDS = 200;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
let passed = 0;
function check(cond, what) {
  if (!cond) throw new Error('assertion failed: ' + what);
  passed++;
}
const range = (n) => Array.from({ length: n }, (_, i) => i + 1);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sorted = (a) => [...a].sort((x, y) => x - y);

/** Start a testbed; resolves with {info, cmd(line), stop()}. */
function testbed(args) {
  const child = spawn(TESTBED, [...args, '--max-secs', '300'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: child.stdout });
  const waiters = [];
  const queue = [];
  lines.on('line', (l) => { const w = waiters.shift(); if (w) w(l); else queue.push(l); });
  const exited = new Promise((r) => child.once('exit', r));
  const next = (what) => new Promise((resolve, reject) => {
    if (queue.length) { resolve(queue.shift()); return; }
    const timer = setTimeout(() => reject(new Error(`testbed: no answer to ${what}`)), 180000);
    waiters.push((l) => { clearTimeout(timer); resolve(l); });
  });
  const cmd = async (line) => {
    child.stdin.write(line + '\n');
    const reply = JSON.parse(await next(line));
    if (!reply.ok) throw new Error(`testbed ${line}: ${reply.error}`);
    return reply;
  };
  const stop = async () => {
    child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
    await exited;
    clearTimeout(timer);
  };
  return next('start').then((l) => ({ info: JSON.parse(l), cmd, stop }));
}

/** A page that loaded the SDK from the node and joined `room` as `user`. */
async function sdkPage(browser, http, user, room) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('pageerror', (e) => { log(user, 'PAGEERROR', e.message); process.exitCode = 1; });
  await page.goto(`${http}/healthz`);
  await page.evaluate(async ({ user, room }) => {
    const { Chorus } = await import('/sdk/chorus.js');
    const url = location.origin.replace(/^http/, 'ws') + '/ws';
    const client = new Chorus({ url, devUser: user, device: 'chromium', sendWindow: 20, ackTimeoutMs: 5000, reconnect: { minMs: 100, maxMs: 1000 } });
    const w = /** @type {any} */ (window);
    w.t = { client, seqs: [], ns: [], gaps: [], onlines: 0, acks: {}, failures: [], acked: 0 };
    client.on('state', (s) => { if (s === 'online') w.t.onlines++; });
    await client.connect();
    const r = client.room(room);
    w.t.room = r;
    r.on('message', (m) => { w.t.seqs.push(m.seq); w.t.ns.push(m.body.n); });
    r.on('gap', (g) => w.t.gaps.push(g));
    await r.join();
  }, { user, room });
  return page;
}

async function scenario(browser, mode) {
  const bed = await testbed(mode === 'cluster' ? ['--mode', 'cluster', '--nodes', '3'] : ['--mode', 'embedded']);
  try {
    const { http, api_key: apiKey } = bed.info;
    const room = `browser-${mode}-${Date.now()}`;
    const alice = await sdkPage(browser, http, 'alice', room);
    const bob = await sdkPage(browser, http, 'bob', room);
    await alice.evaluate((n) => {
      const t = /** @type {any} */ (window).t;
      t.done = Promise.all(Array.from({ length: n }, (_, i) => t.room.send({ n: i + 1, text: `message ${i + 1}` }).then(
        (ack) => { t.acked++; (t.acks[i + 1] ??= []).push(ack.seq); },
        (e) => { t.failures.push(`${i + 1}: ${e.code} ${e.message}`); },
      )));
    }, SENDS);
    const acked = () => alice.evaluate(() => /** @type {any} */ (window).t.acked);
    for (let i = 0; i < 1500 && (await acked()) < 40; i++) await sleep(20);
    const atFault = await acked();
    check(atFault >= 40 && atFault < SENDS, `${mode}: the fault comes mid-stream (after ${atFault} acks)`);
    let what;
    if (mode === 'cluster') {
      const { owner, index } = await bed.cmd(`owner ${room}`);
      check(index !== null, `${mode}: the room has an owner`);
      await bed.cmd(`kill ${index}`);
      await sleep(3000);
      await bed.cmd(`start ${index}`);
      what = `owner ${owner} killed, restarted after 3 s`;
    } else {
      await bed.cmd('kill 0');
      await sleep(500);
      await bed.cmd('start 0');
      what = 'node killed, restarted after 0.5 s';
    }
    await alice.evaluate(() => Promise.race([
      /** @type {any} */ (window).t.done,
      new Promise((_, reject) => setTimeout(() => reject(new Error('sends did not settle in 90 s')), 90000)),
    ]));
    const a = await alice.evaluate(() => { const { client, room, done, ...t } = /** @type {any} */ (window).t; return t; });
    check(same(a.failures, []), `${mode}: no send failed: ${JSON.stringify(a.failures)}`);
    const ackLists = Object.values(a.acks);
    check(ackLists.length === SENDS && ackLists.every((l) => l.length === 1), `${mode}: every send acked once`);
    check(same(sorted(ackLists.map((l) => l[0])), range(SENDS)), `${mode}: the acks carry seqs 1..${SENDS}`);
    for (const [who, page] of [['alice', alice], ['bob', bob]]) {
      for (let i = 0; i < 4500; i++) {
        if ((await page.evaluate(() => /** @type {any} */ (window).t.seqs.length)) >= SENDS) break;
        await sleep(20);
      }
      await sleep(300); // a duplicate would show up now
      const t = await page.evaluate(() => { const { client, room, done, ...t } = /** @type {any} */ (window).t; return t; });
      check(same(t.seqs, range(SENDS)), `${mode}: ${who} got seqs 1..${SENDS} once, in order (got ${t.seqs.length})`);
      check(same(sorted(t.ns), range(SENDS)), `${mode}: ${who} got every body once`);
      check(same(t.gaps, []), `${mode}: ${who} saw no gap`);
      log(`${mode}: ${who} reconnected ${t.onlines - 1}x`);
    }
    const stored = [];
    for (let after = 0; ;) {
      const res = await fetch(`${http}/v1/rooms/${room}/messages?after=${after}&limit=100`, { headers: { authorization: `Bearer ${apiKey}` } });
      const page = await res.json();
      stored.push(...page.messages);
      if (!page.has_more || !page.messages.length) break;
      after = page.messages.at(-1).seq;
    }
    check(same(stored.map((m) => m.seq), range(SENDS)), `${mode}: history holds seqs 1..${SENDS}`);
    check(same(sorted(stored.map((m) => m.body.n)), range(SENDS)), `${mode}: history holds every body once`);
    log(`${mode}: ok (${what}; fault after ${atFault} acks)`);
    await alice.context().close();
    await bob.context().close();
  } finally {
    await bed.stop();
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    await scenario(browser, 'embedded');
    await scenario(browser, 'cluster');
  } finally {
    await browser.close();
  }
  if (process.exitCode) { console.error('FAIL: errors in the pages (see above)'); process.exit(1); }
  console.log(`sdk through kills: ${passed} passed, 0 failed`);
})().catch((e) => {
  console.error('FAIL:', e.message || e);
  process.exit(1);
});
