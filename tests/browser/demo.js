// Drives the demo page at / in headless Chromium as two users: presence, typing,
// chat in both directions and read receipts. Run by tests/browser/run.
const { chromium } = require('playwright-core');
const base = process.env.CHORUS_URL || 'http://127.0.0.1:8080';
const shots = process.env.SHOTS_DIR || '/tmp';
const assert = (cond, what) => { if (!cond) { console.error('FAIL: ' + what); process.exit(1); } };
(async () => {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox','--disable-gpu','--disable-background-networking','--disable-component-update','--disable-sync','--no-first-run'] });
  const mk = async (name, device) => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    const p = await ctx.newPage();
    p.on('pageerror', e => console.log(name, 'PAGEERROR', e.message));
    p.on('console', m => { if (m.type() === 'error') { console.log(name, 'console error', m.text()); process.exitCode = 1; } });
    await p.goto(base + '/');
    await p.fill('#name', name);
    if (device) await p.fill('#device', device);
    await p.click('#connect');
    await p.waitForSelector('#status[data-state="online"]', { timeout: 5000 });
    await p.fill('#room', 'lobby');
    await p.click('#join');
    return p;
  };
  const a = await mk('alice');
  const b = await mk('bob', 'phone');
  await a.waitForSelector('#presence li[data-user="bob"]', { timeout: 5000 });
  await b.type('#input', 'hi alice, typing...');
  await a.waitForFunction(() => document.querySelector('#typing').textContent.includes('bob'), null, { timeout: 5000 });
  await a.screenshot({ path: shots + '/demo-typing.png' });
  await b.click('#send');
  await a.waitForSelector('#messages .msg[data-seq="1"]', { timeout: 5000 });
  await a.fill('#input', 'hello bob!');
  await a.click('#send');
  await b.waitForSelector('#messages .msg[data-seq="2"]', { timeout: 5000 });
  await a.bringToFront(); await b.bringToFront();
  await new Promise(r => setTimeout(r, 1500));
  await a.screenshot({ path: shots + '/demo-alice.png' });
  await b.screenshot({ path: shots + '/demo-bob.png' });
  const seen = await a.$$eval('#messages .msg', els => els.map(e => e.dataset.seq + ':' + (e.dataset.readBy || '')));
  console.log('alice sees', seen);
  assert(seen.length === 2 && seen[0].startsWith('1:') && seen[1].startsWith('2:'), 'both messages in seq order');
  await a.waitForSelector('#messages .msg[data-seq="2"][data-read-by*="bob"]', { timeout: 5000 });
  const online = await b.$$eval('#presence li[data-user]', els => els.map(e => e.dataset.user).sort());
  assert(JSON.stringify(online) === '["alice","bob"]', 'bob sees both users online: ' + online);
  console.log('demo page: 2 passed, 0 failed');
  await browser.close();
})().catch(e => { console.error('FAIL', e); process.exit(1); });
