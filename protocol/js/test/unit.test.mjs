// Unit tests of the SDK (chorus.js) against a scripted fake WebSocket: no network, mocked
// setTimeout and Date. Each test plays the server (PROTOCOL.md sections 3-13) and checks what
// the SDK sends and emits. Run: node --test test/unit.test.mjs
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { Chorus, ChorusError, memoryStorage } from "../chorus.js";
import { FakeServer, flush, msg, joined, jwt } from "./fake-socket.mjs";

const T0 = 1_700_000_000_000;

/**
 * A client on a fake server with mocked timers. `random`: the value Math.random returns (a
 * number, a function, or null to leave it alone).
 */
function setup(t, opts = {}, { random = 0.5 } = {}) {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: T0 });
  if (random !== null) t.mock.method(Math, "random", typeof random === "function" ? random : () => random);
  const server = new FakeServer();
  const client = new Chorus({
    url: "ws://chorus.test/ws", WebSocket: server.WebSocket, token: opts.getToken ? undefined : "tok-static",
    reconnect: { minMs: 100, maxMs: 1000 }, autoDelivered: false, ...opts,
  });
  const events = { error: [], state: [], close: [], handlerError: [] };
  client.on("error", (e) => events.error.push(e));
  client.on("state", (s) => events.state.push(s));
  client.on("close", (c) => events.close.push(c));
  client.on("handlerError", (e) => events.handlerError.push(e));
  t.after(() => client.close());
  const h = {
    t, server, client, events,
    /** Advance the mocked clock by `ms`, `step` ms at a time, running promise continuations. */
    async advance(ms, step = 1) {
      let left = ms;
      while (left > 0) {
        const d = Math.min(step, left);
        t.mock.timers.tick(d);
        left -= d;
        await flush();
      }
    },
    /** connect() and answer hello with welcome; returns the socket. */
    async online(welcome = {}) {
      const p = client.connect();
      await flush();
      const ws = server.last;
      assert.ok(ws, "the client opened a socket");
      ws.take("hello");
      ws.welcome(welcome);
      await settle(p);
      return ws;
    },
    /** Join `name` on `ws` (answering the join); returns {room, join frame}. */
    async join(ws, name, over = {}, opts = {}) {
      const room = client.room(name);
      const p = room.join(opts);
      const j = ws.take("join");
      ws.recv(joined(j, over));
      await settle(p);
      return { room, join: j };
    },
  };
  return h;
}

/** Every message a room emits. */
function collect(room) {
  const seqs = [];
  room.on("message", (m) => seqs.push(m.seq));
  return seqs;
}

/** A history reply with messages `from..to` of a room. */
function historyReply(req, from, to, hasMore) {
  const messages = [];
  for (let s = from; s <= to; s++) {
    const { op, ...m } = msg(req.room, s);
    messages.push(m);
  }
  return { op: "history", id: req.id, room: req.room, messages, has_more: hasMore };
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/**
 * The outcome of `p`, which must settle within a few turns of the event loop: with mocked
 * timers a promise that never settles would otherwise end the whole file ("Promise resolution
 * is still pending but the event loop has already resolved") instead of failing one test.
 */
async function settle(p, what = "the promise") {
  let done = false;
  const guarded = Promise.resolve(p).finally(() => { done = true; });
  guarded.catch(() => {});
  for (let i = 0; i < 5 && !done; i++) await flush();
  if (!done) throw new Error(`${what} did not settle`);
  return guarded;
}

// ---- connection and close codes -----------------------------------------------------------

describe("connection", () => {
  test("hello carries v, token, device and meta on a socket offering chorus.v1; connect() resolves at welcome", async (t) => {
    const h = setup(t, { device: "phone", meta: { status: "available" } });
    const p = h.client.connect();
    assert.equal(h.client.state, "connecting");
    await flush();
    const ws = h.server.last;
    assert.equal(ws.url, "ws://chorus.test/ws");
    assert.equal(ws.protocols, "chorus.v1");
    assert.deepEqual(ws.take("hello"), { op: "hello", v: 1, token: "tok-static", device: "phone", meta: { status: "available" } });
    ws.welcome({ session: "s_9", node: "gw-7" });
    assert.deepEqual(await settle(p), { user: "alice", session: "s_9", node: "gw-7", resumed: false });
    assert.equal(h.client.state, "online");
    assert.equal(h.client.user, "alice");
    assert.deepEqual(h.events.state, ["connecting", "online"]);
    assert.deepEqual(ws.violations, []);
  });

  test("devUser without a token goes in ?user= on the URL", async (t) => {
    const h = setup(t, { token: undefined, devUser: "bob" });
    h.client.connect().catch(() => {});
    await flush();
    assert.equal(h.server.last.url, "ws://chorus.test/ws?user=bob");
    assert.equal(h.server.last.take("hello").token, undefined);
  });
});

describe("close codes", () => {
  test("4000 after a reconnect frame: waits retry_after_ms plus a jitter of at most 1 s, then resumes", async (t) => {
    for (const r of [0.25, 0.999]) {
      await t.test(`random ${r}`, async (t) => {
        const h = setup(t, {}, { random: r });
        const ws = await h.online();
        ws.recv({ op: "reconnect", reason: "shutdown", retry_after_ms: 500 });
        ws.serverClose(4000, "shutdown");
        assert.equal(h.client.state, "offline");
        const delay = Math.ceil(500 + r * 1000);
        assert.ok(delay - 500 <= 1000);
        await h.advance(delay - 1, 10);
        assert.equal(h.server.sockets.length, 1, "not before retry_after_ms + jitter");
        await h.advance(1);
        assert.equal(h.server.sockets.length, 2);
        const hello = h.server.last.take("hello");
        assert.equal(hello.resume.token, "rt1");
        assert.deepEqual(h.events.error, []);
      });
    }
  });

  test("after a reconnect frame nothing more is sent on the draining connection; the send goes out after the resume", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    ws.recv({ op: "reconnect", reason: "shutdown", retry_after_ms: 500 });
    const sent = room.send({ text: "during the drain" });
    room.typing(true);
    room.read(3);
    await h.advance(300, 10);
    assert.deepEqual(ws.unread(), [], "no send, typing or read on a draining connection");
    ws.serverClose(4000, "shutdown");
    await h.advance(1100, 10);
    const ws2 = h.server.last;
    assert.notEqual(ws2, ws);
    ws2.take("hello");
    ws2.welcome({ resumed: true, rooms: [{ room: "general", tip: 0, last_read: 0, last_delivered: 0, unread: 0 }] });
    ws2.recv({ op: "joined", room: "general", tip: 0, last_read: 0, recovered: true, replayed: 0 });
    await flush();
    const s = ws2.take("send");
    assert.deepEqual(s.body, { text: "during the drain" });
    ws2.recv({ op: "ack", id: s.id, room: "general", cid: s.cid, seq: 1, msg_id: "m1", ts: 1, duplicate: false });
    assert.equal((await settle(sent)).seq, 1);
  });

  test("a reconnect frame without the close that should follow: the client closes after 5 s and reconnects", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    ws.recv({ op: "reconnect", reason: "shutdown", retry_after_ms: 500 });
    await h.advance(4900, 100);
    assert.equal(h.server.sockets.length, 1);
    ws.recv({ op: "ping" }); // server frames keep coming: the drain timer is not re-armed by them
    await h.advance(100, 10);
    assert.equal(h.client.state, "offline");
    await h.advance(1600, 10);
    assert.equal(h.server.sockets.length, 2);
    assert.equal(h.server.last.take("hello").resume.token, "rt1");
  });

  for (const code of [4001, 4002, 4003, 4004, 4005, 4006, 1000, 1001, 1005, 1006, 1011, 1012, 1013]) {
    test(`${code} reconnects with backoff and resumes`, async (t) => {
      const h = setup(t);
      const ws = await h.online();
      ws.serverClose(code, "x");
      assert.equal(h.client.state, "offline");
      assert.deepEqual(h.events.close, [{ code, reason: "x" }]);
      await h.advance(49);
      assert.equal(h.server.sockets.length, 1);
      await h.advance(1); // random 0.5 x minMs 100
      assert.equal(h.server.sockets.length, 2);
      assert.equal(h.server.last.take("hello").resume.token, "rt1");
      h.server.last.welcome({ resumed: true });
      assert.equal(h.client.state, "online");
      assert.deepEqual(h.events.error, []);
    });
  }

  for (const code of [4500, 4503, 4504, 4505, 4506, 1002, 1003, 1007, 1008, 1009, 1010]) {
    test(`${code} stops: state closed, an error with closeCode, connect() rejects`, async (t) => {
      const h = setup(t);
      const ws = await h.online();
      const reason = code >= 4000 ? `reason_${code}: detail` : "";
      ws.serverClose(code, reason);
      assert.equal(h.client.state, "closed");
      assert.equal(h.events.error.length, 1);
      const e = h.events.error[0];
      assert.ok(e instanceof ChorusError);
      assert.equal(e.closeCode, code);
      assert.equal(e.code, code >= 4000 ? `reason_${code}` : `close_${code}`);
      await h.advance(120000, 1000);
      assert.equal(h.server.sockets.length, 1, "no reconnect");
      // A later connect() that meets the same close before welcome rejects.
      const p = h.client.connect();
      await flush();
      assert.equal(h.server.sockets.length, 2);
      h.server.last.take("hello");
      h.server.last.serverClose(code, reason);
      await assert.rejects(settle(p), (err) => err instanceof ChorusError && err.closeCode === code);
      assert.equal(h.client.state, "closed");
      await h.advance(120000, 1000);
      assert.equal(h.server.sockets.length, 2);
    });
  }

  test("4501 with getToken: one retry with a fresh token, then stop", async (t) => {
    let n = 0;
    const h = setup(t, { getToken: () => jwt({ sub: "alice", exp: T0 / 1000 + 3600, n: ++n }) });
    const p = h.client.connect();
    await flush();
    const t1 = h.server.last.take("hello").token;
    h.server.last.serverClose(4501, "unauthorized: invalid token");
    assert.equal(h.client.state, "offline");
    await h.advance(50);
    assert.equal(h.server.sockets.length, 2);
    const t2 = h.server.last.take("hello").token;
    assert.notEqual(t2, t1);
    assert.equal(n, 2);
    h.server.last.serverClose(4501, "unauthorized: invalid token");
    await assert.rejects(settle(p), (e) => e instanceof ChorusError && e.code === "unauthorized" && e.closeCode === 4501);
    assert.equal(h.client.state, "closed");
    await h.advance(60000, 1000);
    assert.equal(h.server.sockets.length, 2);
  });

  test("4501 with a static token stops at once", async (t) => {
    const h = setup(t);
    const p = h.client.connect();
    await flush();
    h.server.last.serverClose(4501, "unauthorized: missing token");
    await assert.rejects(settle(p), (e) => e.closeCode === 4501);
    assert.equal(h.client.state, "closed");
  });

  test("4502 with getToken reconnects with a new token and resumes", async (t) => {
    let n = 0;
    const h = setup(t, { getToken: () => jwt({ sub: "alice", exp: T0 / 1000 + 3600, n: ++n }) });
    const p = h.client.connect();
    await flush();
    const t1 = h.server.last.take("hello").token;
    h.server.last.welcome();
    await settle(p);
    // A network loss keeps the still valid token.
    h.server.last.serverClose(1006);
    await h.advance(50);
    assert.equal(h.server.last.take("hello").token, t1);
    assert.equal(n, 1);
    h.server.last.welcome({ resumed: true });
    h.server.last.serverClose(4502, "token_expired: token expired");
    assert.equal(h.client.state, "offline");
    await h.advance(50);
    assert.equal(h.server.sockets.length, 3);
    const hello = h.server.last.take("hello");
    assert.notEqual(hello.token, t1);
    assert.equal(n, 2);
    assert.equal(hello.resume.token, "rt1");
    assert.deepEqual(h.events.error, []);
  });

  test("4502 with a static token stops", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    ws.serverClose(4502, "token_expired: token expired");
    assert.equal(h.client.state, "closed");
    assert.equal(h.events.error[0].closeCode, 4502);
    assert.equal(h.events.error[0].code, "token_expired");
    await h.advance(60000, 1000);
    assert.equal(h.server.sockets.length, 1);
  });

  test("4507 reconnects without resume (a new session)", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    await h.join(ws, "general", { tip: 3 });
    ws.serverClose(4507, "session_taken_over");
    assert.equal(h.client.state, "offline");
    await h.advance(50);
    assert.equal(h.server.sockets.length, 2);
    const ws2 = h.server.last;
    assert.equal(ws2.take("hello").resume, undefined);
    ws2.welcome({ session: "s_2", resume_token: "rt2" });
    assert.deepEqual(ws2.take("join"), { op: "join", id: ws2.sent[1].id, room: "general", since: 3 });
    assert.deepEqual(h.events.error, []);
  });
});

// ---- backoff --------------------------------------------------------------------------------

describe("backoff", () => {
  test("full jitter, exponential growth capped at maxMs, reset after welcome", async (t) => {
    const randoms = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.5, 0.1];
    let i = 0;
    const h = setup(t, { reconnect: { minMs: 100, maxMs: 800 } }, { random: () => randoms[i++] });
    h.client.connect();
    await flush();
    // Closes before welcome: attempts 0..5 wait r x min(800, 100 x 2^n).
    const expected = [50, 100, 200, 400, 400, 400];
    for (let n = 0; n < expected.length; n++) {
      h.server.last.serverClose(1006);
      const before = h.server.sockets.length;
      await h.advance(expected[n] - 1, 1);
      assert.equal(h.server.sockets.length, before, `attempt ${n}: not before ${expected[n]} ms`);
      await h.advance(1);
      assert.equal(h.server.sockets.length, before + 1, `attempt ${n}: after ${expected[n]} ms`);
    }
    const gaps = h.server.attempts.slice(1).map((a, k) => a - h.server.attempts[k]);
    assert.deepEqual(gaps, expected);
    // Full jitter: the delay is random x window (0.25 x min(800, 100 x 2^6) = 200).
    h.server.last.serverClose(1006);
    await h.advance(199);
    assert.equal(h.server.sockets.length, 7);
    await h.advance(1);
    assert.equal(h.server.sockets.length, 8);
    // A welcome resets the attempt: the next wait is 0.5 x 100 again, then 0.1 x 200.
    h.server.last.take("hello");
    h.server.last.welcome();
    h.server.last.serverClose(1006);
    await h.advance(49);
    assert.equal(h.server.sockets.length, 8);
    await h.advance(1);
    assert.equal(h.server.sockets.length, 9);
    h.server.last.serverClose(1006);
    await h.advance(19);
    assert.equal(h.server.sockets.length, 9);
    await h.advance(1);
    assert.equal(h.server.sockets.length, 10);
  });

  test("a failing new WebSocket is retried with the backoff", async (t) => {
    const h = setup(t);
    h.server.failNext = 2;
    const p = h.client.connect();
    await flush();
    assert.equal(h.server.sockets.length, 0);
    assert.equal(h.events.error.length, 1);
    assert.equal(h.events.error[0].code, "unavailable");
    await h.advance(50);
    assert.equal(h.server.attempts.length, 2);
    await h.advance(100);
    assert.equal(h.server.attempts.length, 3);
    assert.deepEqual(h.server.attempts.map((a) => a - T0), [0, 50, 150]);
    h.server.last.take("hello");
    h.server.last.welcome();
    await settle(p);
    assert.equal(h.client.state, "online");
  });

  test("a socket that never opens is given up after the handshake timeout and retried", async (t) => {
    const h = setup(t);
    h.server.autoOpen = false;
    h.client.connect().catch(() => {});
    await flush();
    await h.advance(15000, 100);
    assert.ok(h.server.sockets[0].closedByClient, "the stuck socket was dropped");
    await h.advance(100);
    assert.equal(h.server.sockets.length, 2);
  });
});

// ---- resume -------------------------------------------------------------------------------

describe("resume", () => {
  /** online with rooms a (lastSeq 5), b (lastSeq 0) joined and c wanted but not yet joined. */
  async function threeRooms(h) {
    const ws = await h.online();
    const a = (await h.join(ws, "a", { tip: 5 })).room;
    const b = (await h.join(ws, "b", { tip: 0 })).room;
    const c = h.client.room("c");
    c.join().catch(() => {});
    ws.take("join"); // never answered
    return { ws, a, b, c };
  }

  test("hello.resume carries the resume token and the last seq of every wanted room", async (t) => {
    const h = setup(t);
    const { ws } = await threeRooms(h);
    ws.recv(msg("a", 6));
    ws.serverClose(1006);
    await h.advance(50);
    const hello = h.server.last.take("hello");
    assert.deepEqual(hello.resume, { token: "rt1", rooms: { a: 6, b: 0 } });
  });

  test("resume token past resume_ttl_ms: hello without resume", async (t) => {
    const h = setup(t);
    const ws = await h.online({ resume_ttl_ms: 10000 });
    await h.join(ws, "a", { tip: 1 });
    await h.advance(10000, 1000);
    ws.serverClose(1006);
    await h.advance(50);
    assert.equal(h.server.last.take("hello").resume, undefined);
  });

  test("resumed:true: no join for the resumed rooms; they count as joined at the server's joined", async (t) => {
    const h = setup(t);
    const { ws, a, b, c } = await threeRooms(h);
    const seen = collect(a);
    ws.serverClose(1006);
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome({ resumed: true, resume_token: "rt2" });
    // Only c, which had no position, is joined by the client.
    assert.deepEqual(ws2.unread(), [{ op: "join", id: ws2.sent[1].id, room: "c" }]);
    assert.equal(a.joined, false);
    const sent = a.send({ text: "after resume" });
    await flush();
    assert.equal(ws2.frames("send").length, 0, "no send before the room's joined");
    ws2.recv(msg("a", 6));
    ws2.recv({ op: "joined", room: "a", tip: 6, last_read: 0, recovered: true, replayed: 1, presence: [], online: 1 });
    ws2.recv({ op: "joined", room: "b", tip: 0, last_read: 0, recovered: true, replayed: 0, presence: [], online: 1 });
    assert.equal(a.joined, true);
    assert.equal(b.joined, true);
    assert.deepEqual(seen, [6]);
    const s = ws2.take("send");
    assert.equal(s.room, "a");
    ws2.recv({ op: "ack", id: s.id, room: "a", cid: s.cid, seq: 7, msg_id: "m7", ts: 1, duplicate: false });
    assert.equal((await settle(sent)).seq, 7);
    // The newest resume token is used next time.
    ws2.serverClose(1006);
    await h.advance(50);
    assert.equal(h.server.last.take("hello").resume.token, "rt2");
  });

  test("resumed:false: every wanted room is joined with since", async (t) => {
    const h = setup(t);
    const { ws } = await threeRooms(h);
    ws.serverClose(1001);
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome({ resumed: false, session: "s_new" });
    const joins = ws2.unread().map(({ id, ...f }) => f);
    assert.deepEqual(joins, [
      { op: "join", room: "a", since: 5 },
      { op: "join", room: "b", since: 0 },
      { op: "join", room: "c" },
    ]);
  });

  test("a resumed room the server cannot re-join (retryable error) is joined after a backoff", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    await h.join(ws, "a", { tip: 2 });
    ws.serverClose(1006);
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome({ resumed: true });
    ws2.recv({ op: "error", request: "join", code: "unavailable", message: "x", retryable: true, retry_after_ms: 300, room: "a" });
    await h.advance(299);
    assert.deepEqual(ws2.unread(), []);
    await h.advance(1);
    const j = ws2.take("join");
    assert.deepEqual({ room: j.room, since: j.since }, { room: "a", since: 2 });
  });
});

// ---- outbox -------------------------------------------------------------------------------

describe("outbox", () => {
  const ack = (s, seq, over = {}) => ({ op: "ack", id: s.id, room: s.room, cid: s.cid, seq, msg_id: `m${seq}`, ts: T0 + seq, duplicate: false, ...over });

  test("retryable error with retry_after_ms: the same cid is resent after that wait", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.send({ text: "hi" }, { meta: { k: 1 } });
    const s1 = ws.take("send");
    assert.equal(typeof s1.cid, "string");
    assert.deepEqual(s1.body, { text: "hi" });
    assert.deepEqual(s1.meta, { k: 1 });
    ws.recv({ op: "error", id: s1.id, request: "send", code: "rate_limited", message: "x", retryable: true, retry_after_ms: 200, cid: s1.cid, room: "general" });
    await h.advance(199);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1);
    const s2 = ws.take("send");
    assert.equal(s2.cid, s1.cid);
    assert.deepEqual(s2.body, s1.body);
    assert.deepEqual(s2.meta, s1.meta);
    assert.notEqual(s2.id, s1.id);
    ws.recv(ack(s2, 1));
    assert.deepEqual(await settle(p), { seq: 1, msgId: "m1", ts: T0 + 1, duplicate: false });
    assert.deepEqual(h.client.outbox, []);
  });

  test("retryable error without retry_after_ms: full-jitter backoff from 250 ms, same cid", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.send("x");
    const s1 = ws.take("send");
    const fail = (s) => ws.recv({ op: "error", id: s.id, request: "send", code: "internal", message: "x", retryable: true, cid: s.cid, room: "general" });
    fail(s1);
    await h.advance(124);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1); // 0.5 x 250
    const s2 = ws.take("send");
    fail(s2);
    await h.advance(249);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1); // 0.5 x 500
    const s3 = ws.take("send");
    assert.equal(s2.cid, s1.cid);
    assert.equal(s3.cid, s1.cid);
    ws.recv(ack(s3, 1));
    assert.equal((await settle(p)).seq, 1);
  });

  test("no reply within ackTimeoutMs: resent with the same cid", async (t) => {
    const h = setup(t, { ackTimeoutMs: 1000 });
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.send("x");
    const s1 = ws.take("send");
    await h.advance(999, 10);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1);
    const s2 = ws.take("send");
    assert.equal(s2.cid, s1.cid);
    ws.recv(ack(s2, 4, { duplicate: true }));
    assert.deepEqual(await settle(p), { seq: 4, msgId: "m4", ts: T0 + 4, duplicate: true });
  });

  test("after a reconnect the same cid is resent once the room's joined arrives", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.send("x");
    const s1 = ws.take("send");
    ws.serverClose(1006);
    assert.equal(h.client.outbox.length, 1);
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome();
    const j = ws2.take("join");
    assert.deepEqual(ws2.unread(), [], "not resent before joined");
    ws2.recv(joined(j));
    const s2 = ws2.take("send");
    assert.equal(s2.cid, s1.cid);
    ws2.recv(ack(s2, 1, { duplicate: true }));
    assert.equal((await settle(p)).duplicate, true);
  });

  test("sendWindow 1 (default): the next send of a room goes only after the previous ack", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const other = (await h.join(ws, "other")).room;
    const done = [];
    const ps = [1, 2, 3].map((n) => room.send({ n }).then((a) => done.push(n)));
    const po = other.send({ n: "o" });
    const s1 = ws.take("send");
    const so = ws.take("send");
    assert.deepEqual([s1.body, so.body], [{ n: 1 }, { n: "o" }], "another room is not held up");
    assert.deepEqual(ws.unread(), []);
    ws.recv(ack(s1, 1));
    const s2 = ws.take("send");
    assert.deepEqual(s2.body, { n: 2 });
    assert.deepEqual(ws.unread(), []);
    ws.recv(ack(s2, 2));
    const s3 = ws.take("send");
    assert.deepEqual(s3.body, { n: 3 });
    ws.recv(ack(s3, 3));
    ws.recv(ack(so, 1));
    await settle(Promise.all([...ps, po]));
    assert.deepEqual(done, [1, 2, 3]);
    assert.equal(new Set([s1.cid, s2.cid, s3.cid]).size, 3);
  });

  test("sendWindow 1: a retry of the head holds the sends behind it", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    room.send(1).catch(() => {});
    room.send(2).catch(() => {});
    const s1 = ws.take("send");
    ws.recv({ op: "error", id: s1.id, request: "send", code: "rate_limited", message: "x", retryable: true, retry_after_ms: 100, cid: s1.cid, room: "general" });
    await h.advance(99);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1);
    assert.deepEqual(ws.unread().map((f) => f.body), [1]);
  });

  test("sendWindow N: up to N un-acked sends per room", async (t) => {
    const h = setup(t, { sendWindow: 3 });
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    for (let n = 1; n <= 5; n++) room.send(n).catch(() => {});
    const first = ws.unread();
    assert.deepEqual(first.map((f) => f.body), [1, 2, 3]);
    ws.recv(ack(first[1], 2));
    assert.deepEqual(ws.unread().map((f) => f.body), [4]);
    ws.recv(ack(first[0], 1));
    assert.deepEqual(ws.unread().map((f) => f.body), [5]);
  });

  test("not_joined: the room is joined again (with since), then the same cid is resent", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general", { tip: 7 });
    const p = room.send("x");
    const s1 = ws.take("send");
    ws.recv({ op: "error", id: s1.id, request: "send", code: "not_joined", message: "x", retryable: false, cid: s1.cid, room: "general" });
    const j = ws.take("join");
    assert.equal(j.since, 7);
    assert.deepEqual(ws.unread(), []);
    ws.recv(joined(j, { tip: 7 }));
    const s2 = ws.take("send");
    assert.equal(s2.cid, s1.cid);
    ws.recv(ack(s2, 8));
    assert.equal((await settle(p)).seq, 8);
  });

  test("a non-retryable error rejects with the typed error and drops the entry", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const roomErrors = [];
    room.on("error", (e) => roomErrors.push(e));
    const p = room.send("x");
    const next = room.send("y");
    const s1 = ws.take("send");
    ws.recv({ op: "error", id: s1.id, request: "send", code: "message_too_large", message: "too big", retryable: false, cid: s1.cid, room: "general" });
    await assert.rejects(settle(p), (e) => e instanceof ChorusError && e.code === "message_too_large" && e.retryable === false
      && e.retryAfterMs === undefined && e.cid === s1.cid && e.room === "general" && e.request === "send" && e.message === "too big");
    assert.equal(roomErrors.length, 1);
    // The next send is no longer held up.
    const s2 = ws.take("send");
    assert.equal(s2.body, "y");
    ws.recv(ack(s2, 1));
    await settle(next);
    assert.deepEqual(h.client.outbox, []);
  });

  test("a retryable error carries retryable and retryAfterMs on the typed error (via the room's error event on a call)", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.history({ after: 0 });
    const q = ws.take("history");
    ws.recv({ op: "error", id: q.id, request: "history", code: "unavailable", message: "x", retryable: true, retry_after_ms: 1000, room: "general" });
    await assert.rejects(settle(p), (e) => e.code === "unavailable" && e.retryable === true && e.retryAfterMs === 1000);
  });

  test("local checks: null body and body over max_message_bytes reject without a frame", async (t) => {
    const h = setup(t);
    const ws = await h.online({ limits: { max_message_bytes: 10 } });
    const { room } = await h.join(ws, "general");
    await assert.rejects(settle(room.send(null)), (e) => e.code === "bad_request");
    await assert.rejects(settle(room.send("é".repeat(5))), (e) => e.code === "message_too_large");
    assert.deepEqual(ws.unread(), []);
  });

  test("an ack with duplicate:true resolves the send", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const acks = [];
    room.on("ack", (a) => acks.push(a));
    const p = room.send("x", { cid: "my-cid" });
    const s = ws.take("send");
    assert.equal(s.cid, "my-cid");
    ws.recv(ack(s, 9, { duplicate: true }));
    assert.deepEqual(await settle(p), { seq: 9, msgId: "m9", ts: T0 + 9, duplicate: true });
    assert.deepEqual(acks, [{ cid: "my-cid", seq: 9, msgId: "m9", ts: T0 + 9, duplicate: true }]);
  });

  test("the own msg on the sending connection does not settle before its ack", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    let settled = false;
    const p = room.send("x").then((a) => { settled = true; return a; });
    const s = ws.take("send");
    ws.recv(msg("general", 1, { sender: "alice", cid: s.cid }));
    await flush();
    assert.equal(settled, false);
    ws.recv(ack(s, 1));
    assert.equal((await settle(p)).duplicate, false);
  });

  test("an own replayed msg whose cid is in the outbox settles it without a resend", async (t) => {
    for (const resumed of [true, false]) {
      await t.test(`resumed:${resumed}`, async (t) => {
        const h = setup(t);
        const ws = await h.online();
        const { room } = await h.join(ws, "general");
        const p = room.send("x");
        const s = ws.take("send");
        ws.serverClose(1006);
        await h.advance(50);
        const ws2 = h.server.last;
        assert.deepEqual(ws2.take("hello").resume.rooms, { general: 0 });
        ws2.welcome({ resumed });
        let j = { room: "general" };
        if (!resumed) j = ws2.take("join");
        ws2.recv(msg("general", 1, { sender: "alice", cid: s.cid, id: "m-own" }));
        ws2.recv(joined(j, { tip: 1, replayed: 1 }));
        assert.deepEqual(await settle(p), { seq: 1, msgId: "m-own", ts: T0 + 1, duplicate: true });
        await flush();
        assert.deepEqual(ws2.frames("send"), []);
        assert.deepEqual(h.client.outbox, []);
      });
    }
  });

  test("persistence: the outbox is saved, and a new client with the same storage sends it once the room is joined", async (t) => {
    // An asynchronous storage, like React Native's AsyncStorage.
    const data = new Map();
    const writes = [];
    const storage = {
      getItem: async (k) => data.get(k) ?? null,
      setItem: async (k, v) => { writes.push(k); data.set(k, v); },
      removeItem: async (k) => { data.delete(k); },
    };
    const h1 = setup(t, { storage, storageKey: "app" });
    await h1.online();
    const room1 = h1.client.room("general");
    room1.join().catch(() => {}); // not answered: the room is wanted but not joined, the sends wait
    room1.send({ n: 1 }).catch(() => {});
    room1.send({ n: 2 }, { meta: { m: true } }).catch(() => {});
    await flush();
    assert.deepEqual(h1.server.last.frames("send"), []);
    const saved = JSON.parse(data.get("app:outbox"));
    assert.deepEqual(saved.map((e) => [e.room, e.body, e.meta, e.user]), [["general", { n: 1 }, undefined, "alice"], ["general", { n: 2 }, { m: true }, "alice"]]);
    const cids = saved.map((e) => e.cid);
    assert.ok(writes.every((k) => k === "app:outbox"));

    // "Reload": another client, same storage. (h1 is not closed: close() would clear it.)
    const server2 = new FakeServer();
    const c2 = new Chorus({ url: "ws://chorus.test/ws", WebSocket: server2.WebSocket, token: "tok", storage, storageKey: "app", autoDelivered: false });
    t.after(() => c2.close());
    const acks = [];
    const room2 = c2.room("general");
    room2.on("ack", (a) => acks.push(a.cid));
    const connected = c2.connect();
    await flush();
    const ws = server2.last;
    ws.take("hello");
    ws.welcome();
    await settle(connected);
    assert.deepEqual(c2.outbox.map((e) => e.cid), cids);
    assert.deepEqual(ws.unread(), [], "nothing before the room is joined");
    room2.join();
    const j = ws.take("join");
    ws.recv(joined(j));
    const s1 = ws.take("send");
    assert.deepEqual([s1.cid, s1.body], [cids[0], { n: 1 }]);
    ws.recv({ op: "ack", id: s1.id, room: "general", cid: s1.cid, seq: 1, msg_id: "m1", ts: 1, duplicate: false });
    const s2 = ws.take("send");
    assert.deepEqual([s2.cid, s2.body, s2.meta], [cids[1], { n: 2 }, { m: true }]);
    await flush();
    assert.deepEqual(JSON.parse(data.get("app:outbox")).map((e) => e.cid), [cids[1]]);
    ws.recv({ op: "ack", id: s2.id, room: "general", cid: s2.cid, seq: 2, msg_id: "m2", ts: 2, duplicate: true });
    await flush();
    assert.deepEqual(acks, cids);
    assert.equal(data.has("app:outbox"), false);
  });

  test("close() rejects pending sends with code closed and clears the storage", async (t) => {
    const storage = memoryStorage();
    const h = setup(t, { storage });
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p1 = room.send(1);
    const p2 = room.send(2);
    const hist = room.history({ after: 0 });
    for (const q of [p1, p2, hist]) q.catch(() => {}); // awaited one after the other below
    assert.ok(storage.getItem("chorus:outbox"));
    h.client.close();
    await assert.rejects(settle(p1), (e) => e instanceof ChorusError && e.code === "closed");
    await assert.rejects(settle(p2), (e) => e.code === "closed");
    await assert.rejects(settle(hist), (e) => e.code === "closed");
    await flush();
    assert.equal(storage.getItem("chorus:outbox"), null);
    assert.deepEqual(h.client.outbox, []);
    assert.equal(h.client.state, "closed");
    assert.deepEqual(ws.closedByClient, { code: 1000, reason: "client closed" });
    await assert.rejects(settle(room.send(3)), (e) => e.code === "closed");
    await h.advance(60000, 1000);
    assert.equal(h.server.sockets.length, 1, "no reconnect after close()");
  });

  test("sends are paced by welcome.limits (sends_per_sec, send_burst)", async (t) => {
    const h = setup(t, { sendWindow: 100 });
    const ws = await h.online({ limits: { sends_per_sec: 10, send_burst: 2 } });
    const { room } = await h.join(ws, "general");
    for (let n = 1; n <= 5; n++) room.send(n).catch(() => {});
    assert.deepEqual(ws.unread().map((f) => f.body), [1, 2], "the burst");
    await h.advance(99);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1);
    assert.deepEqual(ws.unread().map((f) => f.body), [3]);
    await h.advance(99);
    assert.deepEqual(ws.unread(), []);
    await h.advance(1);
    assert.deepEqual(ws.unread().map((f) => f.body), [4]);
    await h.advance(100);
    assert.deepEqual(ws.unread().map((f) => f.body), [5]);
  });
});

// ---- rooms --------------------------------------------------------------------------------

describe("rooms", () => {
  test("a refused join rejects with the typed error and the room is not wanted any more", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("secret");
    const p = room.join();
    const j = ws.take("join");
    ws.recv({ op: "error", id: j.id, request: "join", code: "forbidden", message: "not allowed", retryable: false, room: "secret" });
    await assert.rejects(settle(p), (e) => e instanceof ChorusError && e.code === "forbidden" && e.room === "secret");
    assert.equal(room.wanted, false);
    ws.serverClose(1006);
    await h.advance(50);
    h.server.last.take("hello");
    h.server.last.welcome();
    assert.deepEqual(h.server.last.unread(), [], "not joined again");
  });

  test("join() right after leave(), before the left reply (a React remount): a join goes out after the leave, and the room works", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general", { tip: 3 });
    const seen = collect(room);
    const left = room.leave({ keepMembership: true });
    const again = room.join();
    const l = ws.take("leave");
    const j = ws.take("join");
    assert.equal(j.since, 3, "the join continues from the last seq");
    assert.equal(room.joined, false, "not joined until the server says so");
    ws.recv({ op: "left", id: l.id, room: "general" });
    await settle(left);
    ws.recv(joined(j, { tip: 3 }));
    await settle(again);
    assert.equal(room.joined, true);
    assert.equal(room.wanted, true);
    ws.recv(msg("general", 4));
    assert.deepEqual(seen, [4]);
    const sent = room.send("still here");
    const s = ws.take("send");
    ws.recv({ op: "ack", id: s.id, room: "general", cid: s.cid, seq: 5, msg_id: "m5", ts: 5, duplicate: false });
    assert.equal((await settle(sent)).seq, 5);
    assert.deepEqual(h.client.rooms.map((r) => r.room), ["general"]);
  });

  test("send() to a room never joined, or left, rejects at once with not_joined (room, request set)", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    await assert.rejects(settle(h.client.room("never").send("x")), (e) => e instanceof ChorusError && e.code === "not_joined" && e.room === "never" && e.request === "send");
    const { room } = await h.join(ws, "general");
    const pending = room.send("in flight");
    ws.take("send");
    const left = room.leave();
    await assert.rejects(settle(pending), (e) => e.code === "left" && e.room === "general" && e.request === "send" && typeof e.cid === "string");
    await assert.rejects(settle(room.send("after")), (e) => e.code === "not_joined");
    ws.recv({ op: "left", id: ws.take("leave").id, room: "general" });
    await settle(left);
    assert.deepEqual(ws.frames("send").length, 1, "only the one sent before the leave");
    assert.deepEqual(h.client.outbox, []);
  });

  test("a Room of a closed client rejects join() and send() with closed; client.room() gives a new one", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    h.client.close();
    const p = h.client.connect();
    await flush();
    h.server.last.take("hello");
    h.server.last.welcome();
    await settle(p);
    await assert.rejects(settle(room.join()), (e) => e.code === "closed" && e.room === "general" && /client\.room/.test(e.message));
    await assert.rejects(settle(room.send("x")), (e) => e.code === "closed" && e.room === "general");
    const fresh = h.client.room("general");
    assert.notEqual(fresh, room);
    const j = fresh.join();
    h.server.last.recv(joined(h.server.last.take("join")));
    await settle(j);
    assert.equal(fresh.joined, true);
  });

  test("leave() sends leave, rejects the room's pending sends with left and ends the membership", async (t) => {
    const h = setup(t);
    const ws = await h.online({ rooms: [{ room: "general", tip: 0, last_read: 0, last_delivered: 0, unread: 0 }, { room: "keep", tip: 0, last_read: 0, last_delivered: 0, unread: 0 }] });
    const { room } = await h.join(ws, "general");
    const keep = (await h.join(ws, "keep")).room;
    const pending = room.send("x");
    ws.take("send");
    const p = room.leave();
    await assert.rejects(settle(pending), (e) => e.code === "left");
    const l = ws.take("leave");
    assert.deepEqual(l, { op: "leave", id: l.id, room: "general" });
    ws.recv({ op: "left", id: l.id, room: "general" });
    await settle(p);
    assert.equal(room.joined, false);
    assert.deepEqual(h.client.rooms.map((r) => r.room), ["keep"]);
    const p2 = keep.leave({ keepMembership: true });
    const l2 = ws.take("leave");
    assert.equal(l2.keep_membership, true);
    ws.recv({ op: "left", id: l2.id, room: "keep" });
    await settle(p2);
    assert.deepEqual(h.client.rooms.map((r) => r.room), ["keep"]);
    ws.recv(msg("general", 1));
    ws.serverClose(1006);
    await h.advance(50);
    assert.deepEqual(h.server.last.take("hello").resume.rooms, {});
  });
});

// ---- delivery -----------------------------------------------------------------------------

describe("delivery", () => {
  test("duplicates (seq <= last) are dropped", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = collect(room);
    await h.join(ws, "general", { tip: 0 });
    for (const s of [1, 2, 2, 1, 3, 3]) ws.recv(msg("general", s));
    assert.deepEqual(seen, [1, 2, 3]);
    assert.equal(room.lastSeq, 3);
    assert.deepEqual(ws.frames("history"), []);
  });

  test("a gap holds later messages and asks history after the last seq; each seq is emitted once, in order", async (t) => {
    const h = setup(t);
    const ws = await h.online({ limits: { max_history_page: 40 } });
    const room = h.client.room("general");
    const seen = collect(room);
    await h.join(ws, "general", { tip: 3 });
    ws.recv(msg("general", 4));
    ws.recv(msg("general", 7));
    ws.recv(msg("general", 8));
    assert.deepEqual(seen, [4]);
    const q = ws.take("history");
    assert.deepEqual({ ...q, id: 0 }, { op: "history", id: 0, room: "general", after: 4, limit: 40 });
    assert.deepEqual(ws.frames("history").length, 1, "one request for the gap");
    ws.recv(historyReply(q, 5, 7, true));
    await flush();
    assert.deepEqual(seen, [4, 5, 6, 7, 8]);
    ws.recv(msg("general", 8));
    ws.recv(msg("general", 9));
    assert.deepEqual(seen, [4, 5, 6, 7, 8, 9]);
    assert.equal(ws.frames("history").length, 1);
  });

  test("joined with recovered:false pages history up to the tip before later live messages", async (t) => {
    const h = setup(t);
    const ws = await h.online({ limits: { max_history_page: 100 } });
    const room = h.client.room("general");
    const seen = collect(room);
    const p = room.join({ since: 5 });
    const j = ws.take("join");
    assert.equal(j.since, 5);
    ws.recv(joined(j, { tip: 250, recovered: false, replayed: 0 }));
    const info = await settle(p);
    assert.equal(info.recovered, false);
    ws.recv(msg("general", 251)); // live, while the backfill runs
    const pages = [[6, 105, true], [106, 205, true], [206, 250, false]];
    for (const [from, to, more] of pages) {
      const q = ws.take("history");
      assert.equal(q.after, from - 1);
      assert.equal(q.limit, 100);
      ws.recv(historyReply(q, from, to, more));
      await flush();
    }
    assert.deepEqual(seen, range(6, 251));
    assert.deepEqual(ws.unread(), []);
  });

  test("messages history no longer has (retention) are skipped with a gap event", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = collect(room);
    const gaps = [];
    room.on("gap", (g) => gaps.push(g));
    await h.join(ws, "general", { tip: 3 });
    ws.recv(msg("general", 8));
    const q1 = ws.take("history");
    assert.equal(q1.after, 3);
    ws.recv(historyReply(q1, 4, 5, false));
    await flush();
    const q2 = ws.take("history");
    assert.equal(q2.after, 5);
    ws.recv({ op: "history", id: q2.id, room: "general", messages: [], has_more: false });
    await flush();
    assert.deepEqual(seen, [4, 5, 8]);
    assert.deepEqual(gaps, [{ from: 6, to: 7 }]);
  });

  test("a first join (no since) starts after the tip", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = collect(room);
    const { join } = await h.join(ws, "general", { tip: 42 });
    assert.equal(join.since, undefined);
    assert.equal(room.lastSeq, 42);
    ws.recv(msg("general", 42));
    ws.recv(msg("general", 43));
    assert.deepEqual(seen, [43]);
    assert.deepEqual(ws.frames("history"), []);
  });

  test("a replay on rejoin after a reconnect continues from the last seq without duplicates", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = collect(room);
    await h.join(ws, "general", { tip: 2 });
    ws.recv(msg("general", 3));
    ws.serverClose(1006);
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome();
    const j = ws2.take("join");
    assert.equal(j.since, 3);
    for (const s of [3, 4, 5]) ws2.recv(msg("general", s));
    ws2.recv(joined(j, { tip: 5, replayed: 3 }));
    assert.deepEqual(seen, [3, 4, 5]);
  });
});

// ---- presence, receipts, typing, unread ---------------------------------------------------

describe("presence, receipts, typing, unread", () => {
  const dev = (device, since = 1) => ({ device, node: "gw-1", since });

  test("presence: snapshot from joined, presence_diff joined/left", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    let emitted = 0;
    room.on("presence", () => emitted++);
    await h.join(ws, "general", {
      presence: [{ user: "alice", devices: [{ ...dev("phone"), meta: { s: 1 } }] }, { user: "bob", devices: [dev("desktop")] }],
      online: 2,
    });
    assert.deepEqual([...room.presence.keys()], ["alice", "bob"]);
    assert.deepEqual(room.presence.get("alice"), [{ device: "phone", node: "gw-1", since: 1, meta: { s: 1 } }]);
    assert.equal(room.online, 2);
    assert.equal(room.hot, false);
    ws.recv({ op: "presence_diff", room: "general", joined: [{ user: "carol", devices: [dev("web")] }], left: ["bob"] });
    assert.deepEqual([...room.presence.keys()].sort(), ["alice", "carol"]);
    assert.equal(room.online, 2);
    assert.equal(emitted, 2);
  });

  test("presence: a hot room keeps the count only, and a normal diff fetches a snapshot again", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "town-hall", { presence: [], online: 1500 });
    assert.equal(room.hot, true);
    assert.equal(room.online, 1500);
    assert.equal(room.presence.size, 0);
    ws.recv({ op: "presence_diff", room: "town-hall", joined: [], left: [], online: 1600 });
    assert.equal(room.online, 1600);
    assert.equal(room.hot, true);
    ws.recv({ op: "presence_diff", room: "town-hall", joined: [{ user: "z", devices: [dev("a")] }], left: [] });
    const q = ws.take("presence");
    assert.equal(q.room, "town-hall");
    ws.recv({ op: "presence", id: q.id, room: "town-hall", users: [{ user: "y", devices: [dev("b")] }, { user: "z", devices: [dev("a")] }] });
    await flush();
    assert.equal(room.hot, false);
    assert.deepEqual([...room.presence.keys()], ["y", "z"]);
    assert.equal(room.online, 2);
  });

  test("a presence request cut by a lost connection rejects (unavailable) and is not sent again", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.fetchPresence();
    ws.take("presence");
    ws.serverClose(1006);
    await assert.rejects(settle(p), (e) => e.code === "unavailable" && e.retryable === true && e.room === "general");
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome();
    assert.deepEqual(ws2.unread().map((f) => f.op), ["join"]);
  });

  test("a history request cut by a lost connection goes out again on the next one", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const p = room.history({ before: 10, limit: 5 });
    ws.take("history");
    ws.serverClose(1006);
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome();
    const q = ws2.frames("history")[0];
    assert.deepEqual({ ...q, id: 0 }, { op: "history", id: 0, room: "general", before: 10, limit: 5 });
    ws2.recv(historyReply(q, 5, 9, true));
    const page = await settle(p);
    assert.deepEqual(page.messages.map((m) => m.seq), [5, 6, 7, 8, 9]);
    assert.equal(page.hasMore, true);
  });

  test("receipts keep the maximum; an own read from another device updates unread", async (t) => {
    const h = setup(t);
    const ws = await h.online({ rooms: [{ room: "general", tip: 10, last_read: 4, last_delivered: 6, unread: 6 }] });
    const room = h.client.room("general");
    const receipts = [];
    room.on("receipt", (r) => receipts.push(r));
    await h.join(ws, "general", { tip: 10, last_read: 4 });
    ws.recv({ op: "receipt", room: "general", receipts: [{ user: "bob", read: 9, delivered: 11 }] });
    ws.recv({ op: "receipt", room: "general", receipts: [{ user: "bob", read: 8, delivered: 8 }, { user: "carol", delivered: 3 }] });
    assert.deepEqual(room.receipts.get("bob"), { read: 9, delivered: 11 });
    assert.deepEqual(room.receipts.get("carol"), { read: 0, delivered: 3 });
    assert.deepEqual(receipts.at(-2), { user: "bob", read: 9, delivered: 11 });
    assert.equal(room.unread, 6);
    ws.recv({ op: "receipt", room: "general", receipts: [{ user: "alice", read: 10, delivered: 10 }] });
    assert.equal(room.lastRead, 10);
    assert.equal(room.unread, 0);
    assert.equal(h.client.rooms[0].unread, 0);
  });

  test("unread: from welcome.rooms, then kept current by messages and reads; client.rooms", async (t) => {
    const h = setup(t);
    const roomsEvents = [];
    h.client.on("rooms", (r) => roomsEvents.push(r));
    const ws = await h.online({
      rooms: [
        { room: "general", tip: 42, last_read: 40, last_delivered: 41, unread: 2 },
        { room: "dm:alice:bob", tip: 5, last_read: 5, last_delivered: 5, unread: 0 },
      ],
    });
    assert.deepEqual(h.client.rooms, [
      { room: "dm:alice:bob", tip: 5, lastRead: 5, lastDelivered: 5, unread: 0 },
      { room: "general", tip: 42, lastRead: 40, lastDelivered: 41, unread: 2 },
    ]);
    assert.ok(roomsEvents.length >= 1);
    const room = h.client.room("general");
    assert.equal(room.unread, 2);
    const unreadEvents = [];
    room.on("unread", (n) => unreadEvents.push(n));
    await h.join(ws, "general", { tip: 42, last_read: 40 });
    ws.recv(msg("general", 43));
    assert.equal(room.unread, 3);
    assert.equal(h.client.rooms[1].unread, 3);
    assert.equal(h.client.rooms[1].tip, 43);
    room.read(43);
    assert.equal(room.unread, 0);
    assert.equal(unreadEvents.at(-1), 0);
    await h.advance(250);
    assert.deepEqual(ws.frames("read"), [{ op: "read", room: "general", seq: 43 }]);
    // Your own message right after your read position is not unread (readOwnMessages).
    ws.recv(msg("general", 44, { sender: "alice" }));
    assert.equal(room.unread, 0);
    ws.recv(msg("general", 45));
    assert.equal(room.unread, 1);
    assert.equal(h.client.rooms[1].unread, 1);
    await h.advance(250);
    assert.deepEqual(ws.frames("read").map((f) => f.seq), [43, 44]);
  });

  test("unread fires only when the count changes, also at welcome for a room made before it", async (t) => {
    const h = setup(t);
    const room = h.client.room("general");
    const events = [];
    room.on("unread", (n) => events.push(n));
    const ws = await h.online({ rooms: [{ room: "general", tip: 9, last_read: 7, last_delivered: 7, unread: 2 }] });
    assert.deepEqual(events, [2], "the welcome's count");
    await h.join(ws, "general", { tip: 9, last_read: 7 });
    ws.recv({ op: "receipt", room: "general", receipts: [{ user: "bob", read: 9, delivered: 9 }] });
    room.read(5);
    assert.deepEqual(events, [2], "no change, no event");
    ws.recv(msg("general", 10));
    room.read(10);
    assert.deepEqual(events, [2, 3, 0]);
  });

  test("a message sent from this client marks the room read up to it, even with unread before it", async (t) => {
    const h = setup(t);
    const ws = await h.online({ rooms: [{ room: "general", tip: 5, last_read: 3, last_delivered: 3, unread: 2 }] });
    const { room } = await h.join(ws, "general", { tip: 5, last_read: 3 });
    assert.equal(room.unread, 2);
    const sent = room.send("reply");
    const s = ws.take("send");
    ws.recv({ op: "ack", id: s.id, room: "general", cid: s.cid, seq: 6, msg_id: "m6", ts: 6, duplicate: false });
    await settle(sent);
    ws.recv(msg("general", 6, { sender: "alice", cid: s.cid })); // the msg after the ack
    assert.equal(room.unread, 0);
    assert.equal(room.lastRead, 6);
    // alice's message from another device does not mark bob's earlier ones read.
    ws.recv(msg("general", 7));
    ws.recv(msg("general", 8, { sender: "alice", cid: "from-phone" }));
    assert.equal(room.unread, 2);
    await h.advance(300, 10);
    assert.deepEqual(ws.frames("read").map((f) => f.seq), [6]);
  });

  test("a handler that throws is reported on the console when nobody listens to handlerError", async (t) => {
    const h = setup(t);
    const logged = [];
    t.mock.method(console, "error", (...a) => logged.push(a));
    const ws = await h.online();
    const room = h.client.room("general");
    room.on("message", () => { throw new Error("app bug"); });
    await h.join(ws, "general");
    ws.recv(msg("general", 1));
    assert.equal(logged.length, 1);
    assert.match(String(logged[0][0]), /"message" handler threw/);
    assert.equal(logged[0][1].message, "app bug");
  });

  test("delivered receipts are sent coalesced with autoDelivered", async (t) => {
    const h = setup(t, { autoDelivered: true });
    const ws = await h.online();
    await h.join(ws, "general", { tip: 0 });
    for (const s of [1, 2, 3]) ws.recv(msg("general", s));
    await h.advance(999, 10);
    assert.deepEqual(ws.frames("delivered"), []);
    await h.advance(1);
    assert.deepEqual(ws.frames("delivered"), [{ op: "delivered", room: "general", seq: 3 }]);
  });

  test("typing: starts are throttled to one per 3 s, stop is sent once", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    room.typing(true);
    assert.deepEqual(ws.unread(), [{ op: "typing", room: "general", active: true }]);
    await h.advance(1000, 100);
    room.typing(true);
    room.typing();
    assert.deepEqual(ws.unread(), []);
    await h.advance(2000, 100);
    room.typing(true);
    assert.deepEqual(ws.unread(), [{ op: "typing", room: "general", active: true }]);
    room.typing(false);
    room.typing(false);
    assert.deepEqual(ws.unread(), [{ op: "typing", room: "general", active: false }]);
    room.typing(true);
    assert.deepEqual(ws.unread(), [{ op: "typing", room: "general", active: true }], "a new start after a stop goes out");
  });

  test("typing: the first start on a new connection goes out at once (the old one's state died with it)", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    room.typing(true);
    assert.deepEqual(ws.unread(), [{ op: "typing", room: "general", active: true }]);
    ws.serverClose(1006, "");
    await h.advance(50);
    const ws2 = h.server.last;
    ws2.take("hello");
    ws2.welcome({ resumed: false });
    const j = ws2.take("join");
    ws2.recv(joined(j, {}));
    await flush();
    room.typing(true);
    assert.deepEqual(ws2.unread(), [{ op: "typing", room: "general", active: true }]);
  });

  test("typing: received indicators expire after 6 s without a repeat; a stop clears at once", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const { room } = await h.join(ws, "general");
    const ev = [];
    room.on("typing", (e) => ev.push(e));
    ws.recv({ op: "typing", room: "general", user: "bob", device: "desktop", active: true });
    assert.deepEqual([...room.typers], [["bob", "desktop"]]);
    await h.advance(3000, 100);
    ws.recv({ op: "typing", room: "general", user: "bob", device: "desktop", active: true }); // a repeat
    await h.advance(5999, 100);
    assert.equal(room.typers.has("bob"), true);
    await h.advance(1);
    assert.equal(room.typers.has("bob"), false);
    assert.deepEqual(ev.at(-1), { user: "bob", device: "desktop", active: false });
    ws.recv({ op: "typing", room: "general", user: "carol", device: "web", active: true });
    ws.recv({ op: "typing", room: "general", user: "carol", device: "web", active: false });
    assert.equal(room.typers.size, 0);
    assert.deepEqual(ev.map((e) => [e.user, e.active]), [["bob", true], ["bob", true], ["bob", false], ["carol", true], ["carol", false]]);
  });
});

// ---- token refresh ------------------------------------------------------------------------

describe("token refresh", () => {
  test("refresh_needed with getToken: refresh with the new token; refreshed updates the expiry", async (t) => {
    let n = 0;
    const tokens = [];
    const h = setup(t, { getToken: async () => { const tk = jwt({ sub: "alice", exp: T0 / 1000 + 60 * ++n }); tokens.push(tk); return tk; } });
    const refreshed = [];
    h.client.on("refreshed", (e) => refreshed.push(e));
    const p = h.client.connect();
    await flush();
    const ws = h.server.last;
    assert.equal(ws.take("hello").token, tokens[0]);
    ws.welcome();
    await settle(p);
    ws.recv({ op: "refresh_needed", exp: T0 / 1000 + 60 });
    await flush();
    const r = ws.take("refresh");
    assert.equal(r.token, tokens[1]);
    assert.equal(typeof r.id, "number");
    ws.recv({ op: "refreshed", id: r.id, exp: T0 / 1000 + 120 });
    await flush();
    assert.deepEqual(refreshed, [T0 / 1000 + 120]);
    // The refreshed token is the one a reconnect uses.
    ws.serverClose(1006);
    await h.advance(50);
    assert.equal(h.server.last.take("hello").token, tokens[1]);
    assert.equal(n, 2);
  });

  test("client.refresh(token) resolves at refreshed; a refused refresh rejects", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const p = h.client.refresh("tok-2");
    const r = ws.take("refresh");
    assert.equal(r.token, "tok-2");
    ws.recv({ op: "refreshed", id: r.id, exp: 1234 });
    assert.equal(await settle(p), 1234);
    const p2 = h.client.refresh("bad");
    const r2 = ws.take("refresh");
    ws.recv({ op: "error", id: r2.id, request: "refresh", code: "unauthorized", message: "x", retryable: false });
    await assert.rejects(settle(p2), (e) => e.code === "unauthorized");
    assert.equal(h.client.state, "online");
  });

  test("a refresh cut by a lost connection is not repeated; the next hello carries the new token", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const p = h.client.refresh("tok-new");
    ws.take("refresh");
    ws.serverClose(1006);
    await assert.rejects(settle(p), (e) => e.code === "unavailable" && e.retryable === true);
    await h.advance(50);
    const ws2 = h.server.last;
    assert.equal(ws2.take("hello").token, "tok-new");
    ws2.welcome({ resumed: true });
    assert.deepEqual(ws2.frames("refresh"), []);
  });

  test("a refused refresh changes nothing: the next connection still uses the old token", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const p = h.client.refresh("tok-bad");
    const r = ws.take("refresh");
    ws.recv({ op: "error", id: r.id, request: "refresh", code: "unauthorized", message: "invalid token", retryable: false });
    await assert.rejects(settle(p), (e) => e.code === "unauthorized");
    ws.serverClose(1006);
    await h.advance(50);
    assert.equal(h.server.last.take("hello").token, "tok-static");
  });

  test("refresh-caused forbidden errors leave the room", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const general = (await h.join(ws, "general")).room;
    const secret = (await h.join(ws, "secret", { tip: 4 })).room;
    const seen = collect(secret);
    const roomErrors = [];
    secret.on("error", (e) => roomErrors.push(e));
    const pending = secret.send("x");
    pending.catch(() => {}); // awaited below
    ws.take("send");
    const p = h.client.refresh("tok-narrow");
    const r = ws.take("refresh");
    ws.recv({ op: "error", request: "refresh", code: "forbidden", message: "not allowed in room 'secret'", retryable: false, room: "secret" });
    ws.recv({ op: "refreshed", id: r.id, exp: 99 });
    assert.equal(await settle(p), 99);
    assert.equal(secret.joined, false);
    assert.equal(secret.wanted, false);
    assert.equal(general.joined, true);
    await assert.rejects(settle(pending), (e) => e.code === "forbidden" && e.room === "secret");
    assert.equal(roomErrors.length, 1);
    assert.equal(roomErrors[0].code, "forbidden");
    assert.deepEqual(h.client.rooms.map((m) => m.room), ["general"], "the membership is gone from client.rooms");
    ws.recv(msg("secret", 5));
    assert.deepEqual(seen, []);
    // Not resumed nor joined again after a reconnect.
    ws.serverClose(1006);
    await h.advance(50);
    const ws2 = h.server.last;
    assert.deepEqual(ws2.take("hello").resume.rooms, { general: 0 });
    ws2.welcome();
    assert.deepEqual(ws2.unread().map((f) => [f.op, f.room]), [["join", "general"]]);
  });
});

// ---- dead-server detection and liveness ---------------------------------------------------

describe("dead-server detection", () => {
  test("no frame for 2 x heartbeat_ms drops the connection and reconnects; any frame re-arms; ping is answered", async (t) => {
    const h = setup(t);
    const ws = await h.online({ heartbeat_ms: 1000 });
    await h.advance(1500, 10);
    ws.recv({ op: "ping" });
    assert.deepEqual(ws.unread().at(-1), { op: "pong" });
    await h.advance(1999, 10);
    assert.equal(ws.closedByClient, null, "1999 ms after the last frame: still up");
    await h.advance(1);
    assert.ok(ws.closedByClient, "dropped");
    assert.equal(h.client.state, "offline");
    assert.equal(h.events.close.at(-1).code, 1006);
    await h.advance(50);
    assert.equal(h.server.sockets.length, 2);
    assert.equal(h.server.last.take("hello").resume.token, "rt1");
  });

  /** Install an EventTarget as the browser's window events; returns it and a restore function. */
  function installWindow() {
    const et = new EventTarget();
    const g = /** @type {any} */ (globalThis);
    g.addEventListener = et.addEventListener.bind(et);
    g.removeEventListener = et.removeEventListener.bind(et);
    g.dispatchEvent = et.dispatchEvent.bind(et);
    return () => { delete g.addEventListener; delete g.removeEventListener; delete g.dispatchEvent; };
  }

  test("online event: a ping is sent; no pong within livenessTimeoutMs drops and reconnects", async (t) => {
    const restore = installWindow();
    const h = setup(t, { livenessTimeoutMs: 500 });
    try {
      const ws = await h.online();
      globalThis.dispatchEvent(new Event("online"));
      const ping = ws.take("ping");
      assert.equal(typeof ping.id, "number");
      await h.advance(499, 10);
      assert.equal(ws.closedByClient, null);
      await h.advance(1);
      assert.ok(ws.closedByClient, "dropped after livenessTimeoutMs");
      assert.equal(h.client.state, "offline");
      await h.advance(50);
      assert.equal(h.server.sockets.length, 2);
    } finally {
      h.client.close();
      restore();
    }
  });

  test("online event: a pong in time keeps the connection", async (t) => {
    const restore = installWindow();
    const h = setup(t, { livenessTimeoutMs: 500 });
    try {
      const ws = await h.online();
      globalThis.dispatchEvent(new Event("online"));
      const ping = ws.take("ping");
      await h.advance(200, 10);
      ws.recv({ op: "pong", id: ping.id });
      await h.advance(2000, 10);
      assert.equal(ws.closedByClient, null);
      assert.equal(h.server.sockets.length, 1);
    } finally {
      h.client.close();
      restore();
    }
  });

  test("online event while waiting for a reconnect: reconnects at once", async (t) => {
    const restore = installWindow();
    const h = setup(t, { reconnect: { minMs: 20000, maxMs: 30000 } });
    try {
      const ws = await h.online();
      ws.serverClose(1006);
      await h.advance(100);
      assert.equal(h.server.sockets.length, 1);
      globalThis.dispatchEvent(new Event("online"));
      await flush();
      assert.equal(h.server.sockets.length, 2);
    } finally {
      h.client.close();
      restore();
    }
  });

  test("close() removes the window listeners", async (t) => {
    const restore = installWindow();
    const h = setup(t);
    try {
      const ws = await h.online();
      h.client.close();
      globalThis.dispatchEvent(new Event("online"));
      await flush();
      assert.deepEqual(ws.frames("ping"), []);
      assert.equal(h.server.sockets.length, 1);
    } finally {
      restore();
    }
  });

  test("connect() after a fatal close listens to online once (one ping per event)", async (t) => {
    const restore = installWindow();
    const h = setup(t);
    try {
      const ws = await h.online();
      ws.serverClose(4500, "protocol_violation");
      assert.equal(h.client.state, "closed");
      const ws2 = await h.online();
      globalThis.dispatchEvent(new Event("online"));
      assert.equal(ws2.frames("ping").length, 1);
    } finally {
      h.client.close();
      restore();
    }
  });
});

// ---- bad input ----------------------------------------------------------------------------

describe("bad input from the server", () => {
  test("non-JSON text, unknown ops, non-objects and binary frames are ignored without throwing", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = collect(room);
    await h.join(ws, "general", { tip: 0 });
    const junk = [
      "not json", "{", "", "null", "42", "\"str\"", "[]", "{}", "[1,2]",
      JSON.stringify({ op: "frobnicate", id: 1 }), JSON.stringify({ op: "frobnicate" }),
      JSON.stringify({ op: 7 }), JSON.stringify({ op: "pong", id: 999999 }),
      JSON.stringify({ op: "msg", room: "nowhere", seq: 1 }),
      JSON.stringify({ op: "joined", room: "nowhere", tip: 1 }),
      JSON.stringify({ op: "ack", room: "general", cid: "unknown", seq: 1 }),
      new ArrayBuffer(8), new Uint8Array([123, 125]), new Uint8Array([52, 50]),
    ];
    for (const j of junk) assert.doesNotThrow(() => ws.recv(j), `frame ${String(j)}`);
    await flush();
    assert.equal(h.client.state, "online");
    assert.deepEqual(h.events.error, []);
    assert.deepEqual(h.events.handlerError, []);
    ws.recv({ op: "ping" });
    assert.deepEqual(ws.sent.at(-1), { op: "pong" });
    ws.recv(msg("general", 1));
    assert.deepEqual(seen, [1]);
  });

  test("known ops in shapes the SDK does not expect are skipped; the connection keeps working", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = collect(room);
    await h.join(ws, "general", { tip: 0 });
    const odd = [
      { op: "welcome" }, { op: "welcome", rooms: 5, limits: "x" }, { op: "joined", room: {} },
      { op: "msg", room: "general" }, { op: "msg", room: "general", seq: "x" }, { op: "ack", id: {} },
      { op: "error" }, { op: "error", id: null, code: 5 }, { op: "receipt", room: "general", user: 3 },
      { op: "presence_diff", room: "general", joined: 5, left: "x" }, { op: "typing", room: "general", user: {} },
      { op: "refresh_needed", expires_at: [] },
      { op: "history", id: 1, messages: 7 }, { op: "presence", id: 2, users: "x" },
    ];
    for (const f of odd) assert.doesNotThrow(() => ws.recv(f), JSON.stringify(f));
    await flush();
    ws.recv(msg("general", 1));
    assert.deepEqual(seen, [1]);
    ws.recv({ op: "ping" });
    assert.deepEqual(ws.sent.at(-1), { op: "pong" });
  });

  test("a throwing application handler does not break the client (handlerError)", async (t) => {
    const h = setup(t);
    const ws = await h.online();
    const room = h.client.room("general");
    const seen = [];
    const reported = [];
    room.on("handlerError", (e, event) => reported.push([e.message, event]));
    room.on("message", () => { throw new Error("app bug"); });
    room.on("message", (m) => seen.push(m.seq));
    await h.join(ws, "general", { tip: 0 });
    ws.recv(msg("general", 1));
    ws.recv(msg("general", 2));
    assert.deepEqual(seen, [1, 2]);
    assert.deepEqual(reported, [["app bug", "message"], ["app bug", "message"]]);
  });
});
