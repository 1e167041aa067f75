// Integration tests of the SDK against real `chorus` processes, started and killed by the
// `chorus-testbed` binary (tests/src/bin/chorus-testbed.rs): an embedded node (SQLite), and a
// 3-node cluster on its own Redis and PostgreSQL behind the test balancer.
//
// In each: two clients (the `ws` package as WebSocket) join a room; alice sends 200 messages
// with 20 in flight (sendWindow 20); the node (embedded) or the room's owner node (cluster) is
// killed with SIGKILL mid-stream and started again. Then: every send was acked once, with
// distinct seqs 1..200; both clients got every seq once, in order, gap-free, and every body
// once; history (the SDK's room.history and the HTTP API) holds each body once.
//
// Run: node --test test/integration.test.mjs (test/run-integration.sh builds the binaries).
// CHORUS_TESTBED: path of chorus-testbed (default ../../target/debug/chorus-testbed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import WebSocket from "ws";
import { Chorus } from "../chorus.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const TESTBED = process.env.CHORUS_TESTBED ?? path.join(here, "../../../target/debug/chorus-testbed");
const SENDS = 200;
const WINDOW = 20;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A running testbed: `info` is its first line; `cmd(line)` answers with its reply line. */
async function testbed(t, args) {
  const child = spawn(TESTBED, [...args, "--max-secs", "600"], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const queue = [];
  const waiters = [];
  lines.on("line", (l) => {
    const w = waiters.shift();
    if (w) w(l);
    else queue.push(l);
  });
  const exited = new Promise((r) => child.once("exit", r));
  const next = (what) => new Promise((resolve, reject) => {
    if (queue.length) return resolve(queue.shift());
    const timer = setTimeout(() => reject(new Error(`testbed: no answer to ${what} within 180 s`)), 180000);
    waiters.push((l) => { clearTimeout(timer); resolve(l); });
  });
  const bed = {
    info: JSON.parse(await next("start")),
    async cmd(line) {
      child.stdin.write(line + "\n");
      const reply = JSON.parse(await next(line));
      assert.ok(reply.ok, `testbed ${line}: ${reply.error}`);
      return reply;
    },
  };
  t.after(async () => {
    child.stdin.end(); // end of file: the testbed stops everything
    const timer = setTimeout(() => child.kill("SIGKILL"), 30000);
    await exited;
    clearTimeout(timer);
  });
  return bed;
}

function client(t, url, user) {
  const c = new Chorus({
    url, devUser: user, device: "node", WebSocket,
    sendWindow: WINDOW, ackTimeoutMs: 5000, reconnect: { minMs: 100, maxMs: 1000 },
  });
  const log = { states: [], errors: [] };
  c.on("state", (s) => log.states.push(s));
  c.on("error", (e) => log.errors.push(`${e.code}: ${e.message}`));
  t.after(() => c.close());
  return { c, log };
}

/** What a room delivered: seqs and bodies in arrival order. */
function record(room) {
  const got = { seqs: [], ns: [], gaps: [] };
  room.on("message", (m) => { got.seqs.push(m.seq); got.ns.push(m.body.n); });
  room.on("gap", (g) => got.gaps.push(g));
  return got;
}

async function until(what, cond, ms = 90000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const range = (n) => Array.from({ length: n }, (_, i) => i + 1);
const sorted = (a) => [...a].sort((x, y) => x - y);

/** Every history message of `room` over the HTTP API, paged by `after`. */
async function httpHistory(http, apiKey, room) {
  const all = [];
  let after = 0;
  for (;;) {
    const res = await fetch(`${http}/v1/rooms/${encodeURIComponent(room)}/messages?after=${after}&limit=100`, {
      headers: { authorization: `Bearer ${apiKey}` },
    });
    assert.equal(res.status, 200, `GET messages: ${res.status}`);
    const page = await res.json();
    all.push(...page.messages);
    if (!page.has_more || page.messages.length === 0) return all;
    after = page.messages.at(-1).seq;
  }
}

/** Every history message of a room through the SDK, paged by `after`. */
async function sdkHistory(room) {
  const all = [];
  let after = 0;
  for (;;) {
    const page = await room.history({ after, limit: 100 });
    all.push(...page.messages);
    if (!page.hasMore || page.messages.length === 0) return all;
    after = page.messages.at(-1).seq;
  }
}

/**
 * The scenario: alice sends SENDS messages, WINDOW in flight; after `killAfter` acks, `fault()`
 * runs (kill, wait, start) while sends continue. Checks every guarantee at the end.
 */
async function sendThroughAFault(t, bed, roomName, fault, { aliceDrops }) {
  const alice = client(t, bed.info.url, "alice");
  const bob = client(t, bed.info.url, "bob");
  await alice.c.connect();
  await bob.c.connect();
  const ra = alice.c.room(roomName);
  const rb = bob.c.room(roomName);
  const gotA = record(ra);
  const gotB = record(rb);
  await ra.join();
  await rb.join();

  const acks = new Map(); // n -> [ack, ...]
  let acked = 0;
  const failures = [];
  const sends = [];
  for (let n = 1; n <= SENDS; n++) {
    sends.push(ra.send({ n, text: `message ${n}` }).then(
      (ack) => { acked++; acks.set(n, [...(acks.get(n) ?? []), ack]); },
      (e) => { failures.push(`${n}: ${e.code} ${e.message}`); },
    ));
  }
  await until("the first acks", () => acked >= 40 || failures.length > 0);
  const atFault = acked;
  const faultInfo = await fault();
  await Promise.all(sends);
  assert.deepEqual(failures, [], "no send failed");

  // Every send acked once, with distinct seqs 1..SENDS.
  assert.equal(acks.size, SENDS);
  for (const [n, list] of acks) assert.equal(list.length, 1, `send ${n} acked once`);
  const ackSeqs = [...acks.values()].map((l) => l[0].seq);
  assert.deepEqual(sorted(ackSeqs), range(SENDS), "the acks carry seqs 1..200, each once");

  // Each receiver: every seq once, in order, gap-free; every body once.
  for (const [who, got] of [["alice", gotA], ["bob", gotB]]) {
    await until(`${who} to receive ${SENDS}`, () => got.seqs.length >= SENDS);
    await sleep(300); // a duplicate would show up now
    assert.deepEqual(got.seqs, range(SENDS), `${who} got seqs 1..${SENDS} once, in order`);
    assert.deepEqual(sorted(got.ns), range(SENDS), `${who} got every body once`);
    assert.deepEqual(got.gaps, [], `${who}: no gap`);
  }
  // The seq a message got is the one its ack reported.
  for (let i = 0; i < SENDS; i++) assert.equal(acks.get(gotB.ns[i])[0].seq, i + 1);

  // History: each body once, through the SDK and the HTTP API.
  const viaSdk = await sdkHistory(rb);
  assert.deepEqual(viaSdk.map((m) => m.seq), range(SENDS), "SDK history: seqs 1..200");
  assert.deepEqual(sorted(viaSdk.map((m) => m.body.n)), range(SENDS), "SDK history: every body once");
  const viaHttp = await httpHistory(bed.info.http, bed.info.api_key, roomName);
  assert.deepEqual(viaHttp.map((m) => m.seq), range(SENDS), "HTTP history: seqs 1..200");
  assert.deepEqual(sorted(viaHttp.map((m) => m.body.n)), range(SENDS), "HTTP history: every body once");
  for (const m of viaHttp) assert.equal(m.sender, "alice");

  const reconnects = alice.log.states.filter((s) => s === "online").length - 1;
  t.diagnostic(`${faultInfo}: fault after ${atFault} acks; alice reconnected ${reconnects}x, bob ${bob.log.states.filter((s) => s === "online").length - 1}x; duplicates acked: ${[...acks.values()].filter((l) => l[0].duplicate).length}`);
  if (aliceDrops) assert.ok(reconnects >= 1, "alice's connection went through the fault");
}

test("embedded node: 200 sends, 20 in flight, the node SIGKILLed mid-stream and restarted", { timeout: 240000 }, async (t) => {
  const bed = await testbed(t, ["--mode", "embedded"]);
  await sendThroughAFault(t, bed, `it-embedded-${Date.now()}`, async () => {
    await bed.cmd("kill 0");
    await sleep(500);
    await bed.cmd("start 0");
    return "embedded node killed and restarted";
  }, { aliceDrops: true });
});

test("3-node cluster behind the balancer: 200 sends, 20 in flight, the room's owner SIGKILLed mid-stream, restarted later", { timeout: 300000 }, async (t) => {
  const bed = await testbed(t, ["--mode", "cluster", "--nodes", "3"]);
  const roomName = `it-cluster-${Date.now()}`;
  await sendThroughAFault(t, bed, roomName, async () => {
    const { owner, index } = await bed.cmd(`owner ${roomName}`);
    assert.ok(owner !== null && index !== null, "the room has an owner while it is busy");
    await bed.cmd(`kill ${index}`);
    // The others take the room over once the lease runs out; the dead node comes back later.
    await sleep(3000);
    await bed.cmd(`start ${index}`);
    const after = await bed.cmd(`owner ${roomName}`);
    return `owner ${owner} killed, restarted after 3 s (owner now ${after.owner})`;
  }, { aliceDrops: false });
});
