// A scripted fake of the browser WebSocket for the SDK's unit tests: no network. The test plays
// the server: it reads what the client sent (`ws.sent`, `ws.take(op)`) and pushes frames
// (`ws.recv(frame)`), closes (`ws.serverClose(code)`) or fails the connection.

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** Wait until every pending microtask and promise continuation has run (setImmediate is real). */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A fake server: `server.WebSocket` is the constructor to pass as the SDK's `WebSocket` option. */
export class FakeServer {
  constructor() {
    /** @type {FakeSocket[]} every socket the client made, in order */
    this.sockets = [];
    /** The next N `new WebSocket(...)` calls throw (a refused connection). */
    this.failNext = 0;
    /** Sockets open by themselves (in a microtask) unless this is false. */
    this.autoOpen = true;
    /** Times (Date.now(), mocked in the tests) of every construction attempt, failed ones too. */
    this.attempts = [];
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(/** @type {string} */ url, /** @type {any} */ protocols) {
        server.attempts.push(Date.now());
        if (server.failNext > 0) {
          server.failNext--;
          throw new Error("connection refused (fake)");
        }
        super(url, protocols);
        server.sockets.push(this);
        if (server.autoOpen) queueMicrotask(() => this.open());
      }
    };
    Object.assign(this.WebSocket, { CONNECTING, OPEN, CLOSING, CLOSED });
  }

  /** The most recent socket. */
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

export class FakeSocket {
  constructor(/** @type {string} */ url, /** @type {any} */ protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = CONNECTING;
    /** @type {any[]} frames the client sent, parsed */
    this.sent = [];
    /** How many of `sent` the test has consumed with take(). */
    this._read = 0;
    /** Set when the client called close(): {code, reason}. */
    this.closedByClient = null;
    /** Sends attempted while not OPEN (a real browser throws while CONNECTING). */
    this.violations = [];
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
  }

  // ---- the client's side (what the SDK calls) ----

  send(/** @type {string} */ data) {
    if (this.readyState !== OPEN) {
      this.violations.push(data);
      if (this.readyState === CONNECTING) throw new Error("InvalidStateError: still CONNECTING");
      return;
    }
    if (typeof data !== "string") throw new Error("the SDK sent a non-string frame");
    this.sent.push(JSON.parse(data));
  }

  close(/** @type {number} */ code = 1005, /** @type {string} */ reason = "") {
    if (this.readyState === CLOSED) return;
    this.closedByClient = { code, reason };
    this.readyState = CLOSING;
    queueMicrotask(() => {
      this.readyState = CLOSED;
      this.onclose?.({ code, reason, wasClean: true });
    });
  }

  // ---- the server's side (what the test calls) ----

  open() {
    if (this.readyState !== CONNECTING) return;
    this.readyState = OPEN;
    this.onopen?.({});
  }

  /** Push a frame (an object is JSON-encoded; a string or binary value is passed as is). */
  recv(/** @type {any} */ frame) {
    const data = typeof frame === "string" || frame instanceof ArrayBuffer || ArrayBuffer.isView(frame)
      ? frame
      : JSON.stringify(frame);
    this.onmessage?.({ data });
  }

  /** The server closes the connection with `code`. */
  serverClose(/** @type {number} */ code, reason = "") {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** The network fails: error, then close 1006. */
  fail() {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "", wasClean: false });
  }

  /** Frames sent by the client with this op (all of them, consumed or not). */
  frames(/** @type {string} */ op) {
    return this.sent.filter((f) => f.op === op);
  }

  /** Frames sent since the last take()/unread(), then mark them read. */
  unread() {
    const out = this.sent.slice(this._read);
    this._read = this.sent.length;
    return out;
  }

  /** The next not yet taken frame; throws if it is missing or has another op. */
  take(/** @type {string} */ op) {
    const f = this.sent[this._read];
    if (!f) throw new Error(`expected the client to send '${op}', it sent nothing more (sent: ${JSON.stringify(this.sent)})`);
    if (f.op !== op) throw new Error(`expected the client to send '${op}', got ${JSON.stringify(f)}`);
    this._read++;
    return f;
  }

  /** Skip frames of the given ops (e.g. receipts), then take `op`. */
  takeSkipping(/** @type {string} */ op, /** @type {string[]} */ skip) {
    while (this.sent[this._read] && skip.includes(this.sent[this._read].op)) this._read++;
    return this.take(op);
  }

  /** The default welcome, with overrides. */
  welcome(/** @type {any} */ over = {}) {
    this.recv(welcomeFrame(over));
  }
}

/** A welcome frame as the server sends it. */
export function welcomeFrame(/** @type {any} */ over = {}) {
  const { limits, ...rest } = over;
  return {
    op: "welcome", v: 1, session: "s_1", user: "alice", device: "default", node: "gw-1",
    resume_token: "rt1", resume_ttl_ms: 300000, heartbeat_ms: 25000, idle_timeout_ms: 60000,
    limits: {
      max_frame_bytes: 65536, max_message_bytes: 16384, max_rooms: 100, sends_per_sec: 50,
      send_burst: 100, max_history_page: 100, max_replay: 10000, ...(limits ?? {}),
    },
    rooms: [], resumed: false, ...rest,
  };
}

/** A msg frame. */
export function msg(/** @type {string} */ room, /** @type {number} */ seq, /** @type {any} */ over = {}) {
  return {
    op: "msg", room, seq, id: `m-${room}-${seq}`, sender: "bob", cid: `bob-${seq}`,
    body: { n: seq }, ts: 1700000000000 + seq, ...over,
  };
}

/** A joined frame for a join request (pass the join frame to echo its id). */
export function joined(/** @type {any} */ join, /** @type {any} */ over = {}) {
  const f = { op: "joined", room: join.room, tip: 0, last_read: 0, recovered: true, replayed: 0, presence: [], online: 1, ...over };
  if (join.id !== undefined && !("id" in over)) f.id = join.id;
  return f;
}

/** An unsigned JWT-shaped token with these claims (the SDK reads `exp` unverified). */
export function jwt(/** @type {any} */ claims) {
  const b64 = (/** @type {any} */ o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}
