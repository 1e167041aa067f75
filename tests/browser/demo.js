// Drives the demo page at / (built on the JavaScript SDK, /sdk/chorus.js) in headless
// Chromium as two users, alice and bob, each in their own browser context:
//   1. dev-mode login (?user=), connect, join lobby and random; presence both ways
//   2. typing indicator, chat both ways in seq order, "pending" until the ack, "seen by"
//   3. unread badge: alice writes in lobby while bob looks at random; it clears when he opens lobby
//   4. bob goes offline (context.setOffline(true)) and writes three messages; they stay
//      pending and alice gets none of them; back online, alice gets the three exactly once,
//      in order (also checked in the server's stored history), bob's pending marks clear,
//      random's badge shows what alice wrote there meanwhile, bob sees "seen by alice"
//   5. a third user pages history with "Load older messages" (room.history({before}))
// Run by tests/browser/run (which starts `chorus` and sets CHORUS_URL); screenshots of every
// page go to SHOTS_DIR on failure.
const { chromium } = require('playwright-core');
const base = process.env.CHORUS_URL || 'http://127.0.0.1:8080';
const shots = process.env.SHOTS_DIR || '/tmp';
const T0 = Date.now();
const t = () => ((Date.now() - T0) / 1000).toFixed(1) + 's';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pages = {};
let step = 'start';
let passed = 0;
const log = (...a) => console.log(`[${t()}]`, ...a);
function check(cond, what) {
  if (!cond) throw new Error('assertion failed: ' + what);
  passed++;
}
const W = { timeout: 8000 };

// The thread of the open room as the page renders it.
const thread = (p) => p.$$eval('#messages .msg', (els) => els.map((e) => ({
  seq: e.dataset.seq ? Number(e.dataset.seq) : null,
  text: e.querySelector('.body').textContent,
  sender: e.dataset.sender,
  pending: e.hasAttribute('data-pending'),
  seen: e.dataset.seenBy || '',
})));
const texts = (ms) => ms.map((m) => m.text);
const inOrder = (ms) => ms.every((m, i) => m.seq === i + 1);

async function send(p, text) {
  await p.fill('#input', text);
  await p.click('#send');
}
async function openRoom(p, name) {
  await p.fill('#room', name);
  await p.click('#join');
  await p.waitForSelector(`#rooms li.active[data-room="${name}"][data-joined="true"]`, W);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const contexts = {};
  let offline = false;
  const mk = async (name, device, query = '') => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const p = await ctx.newPage();
    contexts[name] = ctx;
    pages[name] = p;
    p.on('pageerror', (e) => { log(name, 'PAGEERROR', e.message); process.exitCode = 1; });
    p.on('console', (m) => {
      if (m.type() !== 'error') return;
      // While offline the SDK's reconnect attempts fail, and Chromium logs each one.
      if (offline && /WebSocket connection to .* failed/.test(m.text())) return;
      log(name, 'console error', m.text());
      process.exitCode = 1;
    });
    await p.goto(`${base}/?user=${name}${query}`);
    check(await p.inputValue('#name') === name, `${name}: ?user= prefills the name`);
    if (device) await p.fill('#device', device);
    await p.click('#connect');
    await p.waitForSelector('#status[data-state="online"]', W);
    return p;
  };

  step = '1. connect and join';
  const a = await mk('alice');
  const b = await mk('bob', 'phone');
  for (const p of [a, b]) { await openRoom(p, 'random'); await openRoom(p, 'lobby'); }
  await a.waitForSelector('#presence li[data-user="bob"]', W);
  await b.waitForSelector('#presence li[data-user="alice"]', W);
  const online = await b.$$eval('#presence li[data-user]', (els) => els.map((e) => e.dataset.user).sort());
  check(JSON.stringify(online) === '["alice","bob"]', 'bob sees both users online: ' + online);
  check(await b.textContent('#presence li[data-user="bob"] .devices') === 'phone', "bob's device is listed");
  log(step, 'ok');

  step = '2. typing, chat, pending, seen';
  await b.type('#input', 'hi alice');
  await a.waitForSelector('#typing[data-users~="bob"]', W);
  await a.screenshot({ path: shots + '/demo-typing.png' });
  await b.click('#send');
  await a.waitForSelector('#messages .msg[data-seq="1"]', W);
  await a.waitForFunction(() => document.querySelector('#typing').textContent === '', null, W); // typing(false) on send
  await send(a, 'hello bob!');
  await b.waitForSelector('#messages .msg[data-seq="2"]', W);
  await a.waitForSelector('#messages .msg[data-seq="2"]:not([data-pending])', W); // acked
  await a.waitForSelector('#messages .msg[data-seq="2"][data-seen-by~="bob"]', W);
  check(/seen by bob/.test(await a.textContent('#messages .msg[data-seq="2"] .receipts')), '"seen by bob" is shown');
  const a2 = await thread(a);
  check(a2.length === 2 && inOrder(a2) && texts(a2).join('|') === 'hi alice|hello bob!', 'alice sees both messages in seq order: ' + JSON.stringify(a2));
  log(step, 'ok');

  step = '3. unread badge';
  await b.click('#rooms li[data-room="random"]');
  await b.waitForSelector('#rooms li.active[data-room="random"]', W);
  await send(a, 'are you there?');
  await send(a, 'bob?');
  await b.waitForSelector('#rooms li[data-room="lobby"][data-unread="2"] .badge', W);
  check(await b.textContent('#rooms li[data-room="lobby"] .badge') === '2', 'bob has 2 unread in lobby');
  await sleep(600); // a read receipt would have arrived by now
  check(!(await a.$('#messages .msg[data-seq="4"][data-seen-by]')), 'not seen while bob looks at another room');
  await b.click('#rooms li[data-room="lobby"]');
  await b.waitForSelector('#rooms li[data-room="lobby"][data-unread="0"]', W);
  check(!(await b.$('#rooms li[data-room="lobby"] .badge')), "bob's lobby badge is gone once he opens it");
  await a.waitForSelector('#messages .msg[data-seq="4"][data-seen-by~="bob"]', W);
  check(!(await a.$('#messages .msg[data-seq="2"][data-seen-by]')), '"seen by" moves to the latest message');
  const b4 = await thread(b);
  check(b4.length === 4 && inOrder(b4), 'bob sees 1..4 in order: ' + JSON.stringify(b4));
  log(step, 'ok');

  step = '4. offline';
  const offlineTexts = ['written offline 1', 'written offline 2', 'written offline 3'];
  offline = true;
  const tOff = Date.now();
  await contexts.bob.setOffline(true);
  for (const text of offlineTexts) await send(b, text);
  const bPending = (await thread(b)).filter((m) => m.pending);
  check(JSON.stringify(texts(bPending)) === JSON.stringify(offlineTexts), 'bob shows the three as pending: ' + JSON.stringify(bPending));
  // Chromium keeps the open WebSocket but passes no frames while offline; the SDK's liveness
  // check (a ping on the `offline` event, 3 s to answer) drops it and starts reconnecting.
  await b.waitForSelector('#status:not([data-state="online"])', W);
  const detectMs = Date.now() - tOff;
  log('bob: connection dropped after', detectMs, 'ms, state', await b.getAttribute('#status', 'data-state'));
  // alice writes in random meanwhile: bob gets it when he is back (a replay), as unread
  await a.click('#rooms li[data-room="random"]');
  await a.waitForSelector('#rooms li.active[data-room="random"]', W);
  await a.fill('#input', 'while you were away');
  await a.click('#send');
  await a.waitForSelector('#messages .msg[data-seq="1"]:not([data-pending])', W);
  await a.click('#rooms li[data-room="lobby"]');
  await a.waitForSelector('#rooms li.active[data-room="lobby"]', W);
  await sleep(1500);
  const aOff = await thread(a);
  check(!aOff.some((m) => offlineTexts.includes(m.text)), 'alice got nothing of what bob wrote offline: ' + JSON.stringify(texts(aOff)));
  check((await thread(b)).filter((m) => m.pending).length === 3, 'still pending on bob');
  check(await b.getAttribute('#status', 'data-state') !== 'online', 'bob is still not online');
  await b.screenshot({ path: shots + '/demo-bob-offline.png' });
  const offMs = Date.now() - tOff;

  step = '4b. back online';
  const tOn = Date.now();
  await contexts.bob.setOffline(false);
  await b.waitForSelector('#status[data-state="online"]', W);
  const reconnectMs = Date.now() - tOn;
  offline = false;
  await a.waitForFunction((n) => document.querySelectorAll('#messages .msg[data-seq]').length >= n, 7, W);
  await b.waitForFunction(() => !document.querySelector('#messages .msg[data-pending]'), null, W);
  const deliverMs = Date.now() - tOn;
  await sleep(1000); // time for a duplicate to show up, if there were one
  const a7 = await thread(a);
  check(a7.length === 7 && inOrder(a7), 'alice has 1..7 in order: ' + JSON.stringify(a7));
  check(JSON.stringify(texts(a7.slice(4))) === JSON.stringify(offlineTexts), 'the three offline messages, in order, at 5..7: ' + JSON.stringify(texts(a7)));
  for (const text of offlineTexts) check(texts(a7).filter((x) => x === text).length === 1, `"${text}" exactly once on alice`);
  const b7 = await thread(b);
  check(JSON.stringify(b7.map((m) => [m.seq, m.text, m.pending])) === JSON.stringify(a7.map((m) => [m.seq, m.text, false])), 'bob shows the same thread, nothing pending: ' + JSON.stringify(b7));
  const stored = await (await fetch(`${base}/v1/rooms/lobby/messages?after=0&limit=100`)).json();
  const storedTexts = stored.messages.map((m) => m.body.text);
  check(stored.messages.length === 7 && JSON.stringify(storedTexts.slice(4)) === JSON.stringify(offlineTexts), 'the server stored each once: ' + JSON.stringify(storedTexts));
  await b.waitForSelector('#rooms li[data-room="random"][data-unread="1"] .badge', W);
  await b.waitForSelector('#messages .msg[data-seq="7"][data-seen-by~="alice"]', W);
  log(step, `ok: offline ${offMs} ms (drop noticed after ${detectMs} ms); online again after ${reconnectMs} ms, all delivered after ${deliverMs} ms`);
  await b.click('#rooms li[data-room="random"]');
  await b.waitForSelector('#rooms li[data-room="random"][data-unread="0"]', W);
  const br = await thread(b);
  check(texts(br).join('|') === 'while you were away' && inOrder(br), 'bob reads what alice wrote in random meanwhile: ' + JSON.stringify(br));

  step = '5. load older';
  const c = await mk('carol', null, '&page=3');
  await openRoom(c, 'lobby');
  await c.waitForFunction(() => document.querySelectorAll('#messages .msg').length === 3, null, W);
  check(JSON.stringify((await thread(c)).map((m) => m.seq)) === '[5,6,7]', 'the newest page first');
  await c.click('#load-older');
  await c.waitForFunction(() => document.querySelectorAll('#messages .msg').length === 6, null, W);
  await c.click('#load-older');
  await c.waitForFunction(() => document.querySelectorAll('#messages .msg').length === 7, null, W);
  const c7 = await thread(c);
  check(inOrder(c7) && JSON.stringify(texts(c7)) === JSON.stringify(texts(a7)), 'carol paged back to seq 1, in order');
  check(await c.isHidden('#load-older'), 'no more to load');
  // A new member starts with everything before her join read (the server puts her read
  // position at the tip), so no receipt goes out for 1..7. What is written while she looks
  // at the room she reads, and alice sees it (bob looks at random: not him).
  await send(a, 'welcome carol');
  await c.waitForSelector('#messages .msg[data-seq="8"]', W);
  await a.waitForSelector('#messages .msg[data-seq="8"][data-seen-by="carol"]', W);
  check(/seen by carol/.test(await a.textContent('#messages .msg[data-seq="8"] .receipts')), '"seen by carol" on what she read');
  log(step, 'ok');

  await a.screenshot({ path: shots + '/demo-alice.png' });
  await b.screenshot({ path: shots + '/demo-bob.png' });
  await browser.close();
  if (process.exitCode) { console.error('FAIL: errors in the pages (see above)'); process.exit(1); }
  console.log(`demo page: ${passed} passed, 0 failed (${t()})`);
})().catch(async (e) => {
  console.error(`FAIL at step "${step}" (${t()}):`, e.message || e);
  for (const [name, p] of Object.entries(pages)) {
    try { await p.screenshot({ path: `${shots}/demo-fail-${name}.png` }); console.error(`screenshot: ${shots}/demo-fail-${name}.png`); } catch { /* page gone */ }
  }
  process.exit(1);
});
