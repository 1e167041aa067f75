// chorus JavaScript SDK: one ES module, no dependencies, no build step.
// Browsers, Node >= 20 (pass `WebSocket`, e.g. the `ws` package's, where there is no global one)
// and React Native. The wire protocol is protocol/PROTOCOL.md; the guarantees this module keeps
// are listed in protocol/js/README.md.
// @ts-check

export const VERSION = "0.1.0";

/**
 * @typedef {{seq: number, id: string, sender: string, cid: string, body: any, meta?: any, ts: number, room: string}} Message
 * @typedef {{device: string, node: string, since: number, meta?: any}} DeviceInfo
 * @typedef {{user: string, devices: DeviceInfo[]}} PresenceUser
 * @typedef {{room: string, tip: number, lastRead: number, lastDelivered: number, unread: number}} RoomState
 * @typedef {{max_frame_bytes: number, max_message_bytes: number, max_rooms: number, sends_per_sec: number,
 *   send_burst: number, max_history_page: number, max_replay: number}} Limits
 * @typedef {{user: string, read: number, delivered: number}} Receipt
 * @typedef {{user: string, device: string, active: boolean}} Typing
 * @typedef {{seq: number, msgId: string, ts: number, duplicate: boolean}} Ack
 * @typedef {{messages: Message[], hasMore: boolean}} HistoryPage
 * @typedef {{tip: number, lastRead: number, recovered: boolean, replayed: number, online: number}} Joined
 * @typedef {"connecting" | "online" | "offline" | "closed"} State
 * @typedef {{getItem(key: string): (string | null | Promise<string | null>),
 *   setItem(key: string, value: string): (void | Promise<void>),
 *   removeItem(key: string): (void | Promise<void>)}} Storage
 * @typedef {{room: string, cid: string, body: any, meta?: any, user?: string | null, createdAt: number}} OutboxEntry
 * @typedef {{ minMs?: number, maxMs?: number }} BackoffOptions
 * @typedef {{
 *   url: string,
 *   token?: string,
 *   getToken?: () => (string | Promise<string>),
 *   devUser?: string,
 *   device?: string,
 *   meta?: any,
 *   WebSocket?: any,
 *   storage?: Storage,
 *   storageKey?: string,
 *   sendWindow?: number,
 *   ackTimeoutMs?: number,
 *   requestTimeoutMs?: number,
 *   reconnect?: BackoffOptions,
 *   autoDelivered?: boolean,
 *   readOwnMessages?: boolean,
 *   livenessTimeoutMs?: number,
 *   logger?: {warn: (...args: any[]) => void},
 * }} ChorusOptions
 */

/** The close codes after which reconnecting as-is cannot help (PROTOCOL.md 11). */
const FATAL_WS_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);
const DEFAULT_LIMITS = {
  max_frame_bytes: 65536, max_message_bytes: 16384, max_rooms: 100, sends_per_sec: 50,
  send_burst: 100, max_history_page: 100, max_replay: 10000,
};
const HANDSHAKE_TIMEOUT_MS = 10000;
const TYPING_REPEAT_MS = 3000;
const TYPING_EXPIRE_MS = 6000;
const READ_FLUSH_MS = 250;
const DELIVERED_FLUSH_MS = 1000;
const MAX_PENDING = 10000;
const SEND_RETRY_BASE_MS = 250;
const SEND_RETRY_CAP_MS = 30000;

/**
 * Every failure the SDK reports: server `error` frames, fatal close codes and local checks.
 * `code` is the protocol's error code (PROTOCOL.md 10) or close reason (11.1), or one of the
 * SDK's own: `closed` (client.close() was called), `left` (the room was left), `timeout`.
 */
export class ChorusError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{retryable?: boolean, retryAfterMs?: number, request?: string, room?: string,
   *   cid?: string, closeCode?: number}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "ChorusError";
    /** @type {string} */ this.code = code;
    /** @type {boolean} */ this.retryable = extra.retryable ?? false;
    /** @type {number | undefined} */ this.retryAfterMs = extra.retryAfterMs;
    /** @type {string | undefined} */ this.request = extra.request;
    /** @type {string | undefined} */ this.room = extra.room;
    /** @type {string | undefined} */ this.cid = extra.cid;
    /** @type {number | undefined} */ this.closeCode = extra.closeCode;
  }

  /** @param {any} f an `error` frame */
  static fromFrame(f) {
    return new ChorusError(String(f.code), String(f.message ?? f.code), {
      retryable: !!f.retryable, retryAfterMs: f.retry_after_ms, request: f.request,
      room: f.room, cid: f.cid,
    });
  }
}

/** An in-memory outbox store (the default): sends survive reconnects, not a reload. */
export function memoryStorage() {
  /** @type {Map<string, string>} */
  const m = new Map();
  return {
    /** @param {string} k */ getItem: (k) => m.get(k) ?? null,
    /** @param {string} k @param {string} v */ setItem: (k, v) => { m.set(k, v); },
    /** @param {string} k */ removeItem: (k) => { m.delete(k); },
  };
}

/**
 * Browser persistence: sends written offline survive a reload and go out when the room is
 * joined again. Pass `window.localStorage` (the default) or any object with the same methods
 * (React Native: AsyncStorage has the same three methods, returning promises).
 * @param {any} [ls]
 * @returns {Storage}
 */
export function localStorageAdapter(ls) {
  const s = ls ?? /** @type {any} */ (globalThis).localStorage;
  if (!s) throw new ChorusError("bad_request", "localStorage is not available here");
  return {
    getItem: (k) => s.getItem(k),
    setItem: (k, v) => s.setItem(k, v),
    removeItem: (k) => s.removeItem(k),
  };
}

/** A small event emitter; a throwing handler never breaks the client. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * Subscribe; returns a function that unsubscribes.
   * @param {string} event
   * @param {(...args: any[]) => void} fn
   * @returns {() => void}
   */
  on(event, fn) {
    let set = this._handlers.get(event);
    if (!set) this._handlers.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {(...args: any[]) => void} fn */
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
  }

  /** @param {string} event @param {...any} args */
  _emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        // An application handler threw: report it, keep the client's state intact.
        if (event !== "handlerError" && this._handlers.get("handlerError")?.size) this._emit("handlerError", e, event);
        else console.error(`chorus: a "${event}" handler threw`, e);
      }
    }
  }
}

/** @returns {string} a random UUID v4 (crypto.randomUUID where available). */
function uuid() {
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** @param {string} s @returns {number} UTF-8 length in bytes */
function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

/** @param {string} jwt @returns {number | undefined} the token's `exp` (seconds), unverified */
function jwtExp(jwt) {
  try {
    const part = jwt.split(".")[1];
    const atob_ = /** @type {any} */ (globalThis).atob;
    if (!part || typeof atob_ !== "function") return undefined;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob_(b64 + "===".slice((b64.length + 3) % 4)));
    return typeof json.exp === "number" ? Math.floor(json.exp) : undefined;
  } catch {
    return undefined;
  }
}

/** Full-jitter exponential backoff: random(0, min(cap, base * 2^attempt)). */
function jitter(/** @type {number} */ base, /** @type {number} */ cap, /** @type {number} */ attempt) {
  return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/** @param {any} m a wire Message @returns {Message} */
function toMessage(m) {
  /** @type {Message} */
  const out = { room: m.room, seq: m.seq, id: m.id, sender: m.sender, cid: m.cid ?? "", body: m.body, ts: m.ts };
  if (m.meta !== undefined) out.meta = m.meta;
  return out;
}

/** @param {any[]} devices @returns {DeviceInfo[]} */
function toDevices(devices) {
  return (devices ?? []).map((d) => {
    /** @type {DeviceInfo} */
    const out = { device: d.device, node: d.node, since: d.since };
    if (d.meta !== undefined) out.meta = d.meta;
    return out;
  });
}

/**
 * A send waiting in the outbox: its cid is made once and kept across every retry.
 * @typedef {{entry: OutboxEntry, resolve?: (a: Ack) => void, reject?: (e: ChorusError) => void,
 *   inFlight: boolean, conn: number, attempt: number, retryAt: number, timer?: any}} PendingSend
 */

/**
 * A request waiting for its reply; it is sent again on the next connection if this one ends.
 * @typedef {{frame: any, replyOp: string, resolve: (f: any) => void, reject: (e: ChorusError) => void,
 *   id: number, conn: number, once?: boolean, timer?: any}} Call
 */

/** One room of a client: handlers first, then `join()`. */
export class Room extends Emitter {
  /** @param {Chorus} client @param {string} name */
  constructor(client, name) {
    super();
    /** @type {Chorus} */ this.client = client;
    /** The room's name. */
    this.name = name;
    /** Live presence: user -> devices (empty and unmaintained while the room is hot). */
    /** @type {Map<string, DeviceInfo[]>} */ this.presence = new Map();
    /** Users online in the room (the server's count for a hot room). */
    this.online = 0;
    /** True while the room has more users online than the server's hot-room threshold. */
    this.hot = false;
    /** Read and delivery positions of the room's users (the maximum seen of each). */
    /** @type {Map<string, {read: number, delivered: number}>} */ this.receipts = new Map();
    /** Who is typing now: user -> device (expired after 6 s without a repeat). */
    /** @type {Map<string, string>} */ this.typers = new Map();
    /** Highest seq delivered to the `message` handlers (each seq once, in order). */
    /** @type {number | undefined} */ this.lastSeq = undefined;
    /** The room's highest known seq. */
    this.tip = 0;
    /** The user's read position (any device). */
    this.lastRead = 0;
    /** The user's delivery position (any device). */
    this.lastDelivered = 0;
    /** The application wants this room joined on every connection. */
    this.wanted = false;
    /** Joined on the current connection. */
    this.joined = false;
    /** @type {Map<number, Message>} messages past a gap, waiting for it to be filled */
    this._pending = new Map();
    this._target = 0; // deliver everything up to here, from history when needed
    this._repairing = false;
    /** @type {{resolve: (j: Joined) => void, reject: (e: ChorusError) => void}[]} */
    this._joinWaiters = [];
    this._joinSince = /** @type {number | undefined} */ (undefined);
    this._joinAttempt = 0;
    this._joinTimer = /** @type {any} */ (undefined);
    this._readQueued = 0;
    this._deliveredQueued = 0;
    this._readTimer = /** @type {any} */ (undefined);
    this._deliveredTimer = /** @type {any} */ (undefined);
    this._typingSentAt = 0;
    this._typingActive = false;
    /** @type {Map<string, any>} */ this._typerTimers = new Map();
    this._unreadEmitted = 0;
  }

  /** Unread count: the room's tip minus the user's read position. */
  get unread() {
    return Math.max(0, this.tip - this.lastRead);
  }

  /**
   * Join the room (a durable membership) and keep it joined on every later connection.
   * Resolves at `joined`, after any replay; rejects on a refusal (`forbidden`,
   * `invalid_room`, `too_many_rooms`). Pass `since` to replay from a position you kept.
   * @param {{since?: number}} [opts]
   * @returns {Promise<Joined>}
   */
  join(opts = {}) {
    if (this.client._closedForGood || this.client._rooms.get(this.name) !== this) {
      return Promise.reject(closedError(this.name, "join"));
    }
    if (opts.since !== undefined && this.lastSeq === undefined) {
      this.lastSeq = opts.since;
      this.tip = Math.max(this.tip, opts.since);
    }
    this.wanted = true;
    const p = new Promise((resolve, reject) => this._joinWaiters.push({ resolve, reject }));
    if (this.joined) {
      // Already joined on this connection: answer at once.
      this._resolveJoin();
    } else {
      this.client._sendJoin(this);
    }
    return /** @type {Promise<Joined>} */ (p);
  }

  /**
   * Send a message. Resolves after the durable commit with the ack; retried with the same
   * cid across errors and reconnects until it is stored (once), or rejects on a
   * non-retryable error. Sends of one room go out in the order of the calls.
   * @param {any} body any JSON value but null
   * @param {{meta?: any, cid?: string}} [opts]
   * @returns {Promise<Ack>}
   */
  send(body, opts = {}) {
    return this.client._enqueueSend(this, body, opts);
  }

  /**
   * A page of history, ascending by seq. `before` pages backwards, `after` forwards.
   * @param {{before?: number, after?: number, limit?: number}} [q]
   * @returns {Promise<HistoryPage>}
   */
  async history(q = {}) {
    /** @type {any} */
    const frame = { op: "history", room: this.name };
    if (q.before !== undefined) frame.before = q.before;
    if (q.after !== undefined) frame.after = q.after;
    if (q.limit !== undefined) frame.limit = q.limit;
    const f = await this.client._call(frame, "history");
    return { messages: (f.messages ?? []).map(toMessage), hasMore: !!f.has_more };
  }

  /**
   * A fresh presence snapshot from the server (also for hot rooms); updates `room.presence`.
   * @returns {Promise<Map<string, DeviceInfo[]>>}
   */
  async fetchPresence() {
    const f = await this.client._call({ op: "presence", room: this.name }, "presence", true);
    this._setPresence(f.users ?? []);
    return this.presence;
  }

  /** Mark the room read up to `seq` (coalesced; syncs to the user's other devices). @param {number} seq */
  read(seq) {
    seq = Math.min(seq, this.tip);
    if (seq > this.lastRead) {
      this.lastRead = seq;
      this.lastDelivered = Math.max(this.lastDelivered, seq);
      this.client._roomChanged(this);
    }
    if (seq > this._readQueued) {
      this._readQueued = seq;
      this._scheduleReceipts();
    }
  }

  /** This device has received the room up to `seq` (coalesced). @param {number} seq */
  delivered(seq) {
    seq = Math.min(seq, this.tip);
    if (seq > this.lastDelivered) this.lastDelivered = seq;
    if (seq > this._deliveredQueued) {
      this._deliveredQueued = seq;
      this._scheduleReceipts();
    }
  }

  /**
   * Typing indicator: call `typing(true)` on every keystroke (a start goes out at most every
   * 3 s) and `typing(false)` when the user stops or sends.
   * @param {boolean} [active]
   */
  typing(active = true) {
    if (!this.joined) return;
    const now = Date.now();
    if (active) {
      if (this._typingActive && now - this._typingSentAt < TYPING_REPEAT_MS) return;
      this._typingActive = true;
      this._typingSentAt = now;
      this.client._raw({ op: "typing", room: this.name, active: true });
    } else if (this._typingActive) {
      this._typingActive = false;
      this.client._raw({ op: "typing", room: this.name, active: false });
    }
  }

  /**
   * Leave the room: live delivery stops on every later connection; without `keepMembership`
   * the durable membership ends too. Pending sends of the room are rejected (`left`).
   * @param {{keepMembership?: boolean}} [opts]
   * @returns {Promise<void>}
   */
  async leave(opts = {}) {
    this.wanted = false;
    // Not joined from here on: a join() called before the `left` reply sends a join of its
    // own, which the server handles after the leave.
    this.joined = false;
    clearTimeout(this._joinTimer);
    this.client._rejectSends(this.name, new ChorusError("left", `room '${this.name}' was left`));
    for (const w of this._joinWaiters.splice(0)) w.reject(new ChorusError("left", "left before joined", { room: this.name, request: "join" }));
    /** @type {any} */
    const frame = { op: "leave", room: this.name };
    if (opts.keepMembership) frame.keep_membership = true;
    try {
      await this.client._call(frame, "left");
    } finally {
      if (!this.wanted) {
        this._resetLive();
        if (!opts.keepMembership) this.client._memberships.delete(this.name);
      }
      this.client._emit("rooms", this.client.rooms);
    }
  }

  _resetLive() {
    this.presence.clear();
    this.typers.clear();
    for (const t of this._typerTimers.values()) clearTimeout(t);
    this._typerTimers.clear();
  }

  _resolveJoin() {
    const j = this._joinedInfo();
    for (const w of this._joinWaiters.splice(0)) w.resolve(j);
  }

  /** @returns {Joined} */
  _joinedInfo() {
    return { tip: this.tip, lastRead: this.lastRead, recovered: true, replayed: 0, online: this.online };
  }

  _scheduleReceipts() {
    if (!this.joined) return; // flushed after the next joined
    if (this._readQueued && !this._readTimer) {
      this._readTimer = setTimeout(() => this._flushRead(), READ_FLUSH_MS);
    }
    if (this._deliveredQueued && !this._deliveredTimer) {
      this._deliveredTimer = setTimeout(() => this._flushDelivered(), DELIVERED_FLUSH_MS);
    }
  }

  _flushRead() {
    this._readTimer = undefined;
    if (!this.joined || !this._readQueued) return;
    this.client._raw({ op: "read", room: this.name, seq: this._readQueued });
    if (this._deliveredQueued <= this._readQueued) this._deliveredQueued = 0; // read implies delivered
    this._readQueued = 0;
  }

  _flushDelivered() {
    this._deliveredTimer = undefined;
    if (!this.joined || !this._deliveredQueued) return;
    this.client._raw({ op: "delivered", room: this.name, seq: this._deliveredQueued });
    this._deliveredQueued = 0;
  }

  /** @param {any[]} users */
  _setPresence(users) {
    this.presence.clear();
    for (const u of users) this.presence.set(u.user, toDevices(u.devices));
    if (!this.hot) this.online = this.presence.size;
    this._emit("presence", this.presence);
  }

  /** A message from the wire (replay, live or history): each seq once, in order. @param {Message} m */
  _accept(m) {
    if (!Number.isSafeInteger(m.seq) || m.seq < 1) return; // not a message of this protocol
    if (this.lastSeq === undefined) this.lastSeq = m.seq - 1;
    if (m.seq <= this.lastSeq) return; // duplicate
    if (m.seq > this.lastSeq + 1) {
      // A gap: hold the message, fill the gap from history.
      if (this._pending.size < MAX_PENDING) this._pending.set(m.seq, m);
      this._target = Math.max(this._target, m.seq);
      this._repair();
      return;
    }
    this._deliver(m);
    let next;
    while ((next = this._pending.get(/** @type {number} */ (this.lastSeq) + 1))) {
      this._pending.delete(next.seq);
      this._deliver(next);
    }
    // Anything still pending is behind another gap.
    for (const seq of this._pending.keys()) if (seq <= /** @type {number} */ (this.lastSeq)) this._pending.delete(seq);
  }

  /** @param {Message} m */
  _deliver(m) {
    this.lastSeq = m.seq;
    const grew = m.seq > this.tip;
    if (grew) this.tip = m.seq;
    const client = this.client;
    const own = m.sender === client.user;
    const fromHere = own && client._ownMessage(this, m);
    // What you send from this client marks the room read up to it (you replied: you saw the
    // room); your messages from other devices are not unread for you when nothing before is.
    if (own && client._opts.readOwnMessages !== false && (fromHere || this.lastRead === m.seq - 1)) {
      this.read(m.seq);
    }
    this._emit("message", m);
    if (client._opts.autoDelivered !== false) this.delivered(m.seq);
    if (grew) client._roomChanged(this);
  }

  /** Fill every hole up to `_target` from history; live messages wait in `_pending`. */
  async _repair() {
    if (this._repairing) return;
    this._repairing = true;
    let attempt = 0;
    try {
      while (this.wanted && this.lastSeq !== undefined && this.lastSeq < this._target) {
        let page;
        try {
          page = await this.history({ after: this.lastSeq, limit: this.client._limits.max_history_page });
        } catch (e) {
          if (this.client._closedForGood) return;
          await sleep(jitter(SEND_RETRY_BASE_MS, SEND_RETRY_CAP_MS, attempt++));
          continue;
        }
        const before = this.lastSeq;
        for (const m of page.messages) this._accept(m);
        if (!page.hasMore && this.lastSeq === before) {
          // History has nothing more: the rest was deleted by retention (or is still in
          // flight live). Skip to the next message we hold, never past what exists.
          const held = [...this._pending.keys()].sort((a, b) => a - b)[0];
          if (held === undefined) break;
          this.lastSeq = held - 1;
          this._emit("gap", { from: before + 1, to: held - 1 });
          const m = /** @type {Message} */ (this._pending.get(held));
          this._pending.delete(held);
          this._accept(m);
        }
      }
    } finally {
      this._repairing = false;
    }
  }

  /** @param {string} user @param {string} device @param {boolean} active */
  _typingEvent(user, device, active) {
    clearTimeout(this._typerTimers.get(user));
    this._typerTimers.delete(user);
    if (active) {
      this.typers.set(user, device);
      this._typerTimers.set(user, setTimeout(() => this._typingEvent(user, device, false), TYPING_EXPIRE_MS));
    } else if (!this.typers.delete(user)) {
      return;
    }
    this._emit("typing", { user, device, active });
  }
}

/** @param {number} ms */
function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** @param {string} [room] @param {string} [request] */
function closedError(room, request) {
  /** @type {{room?: string, request?: string}} */
  const extra = {};
  if (room !== undefined) extra.room = room;
  if (request !== undefined) extra.request = request;
  return new ChorusError("closed", room !== undefined && request === "join"
    ? `the client was closed (this Room belongs to it: use client.room("${room}") after connect())`
    : "the client was closed", extra);
}

/**
 * A chorus client: one connection at a time, reconnected and resumed by itself.
 */
export class Chorus extends Emitter {
  /** @param {ChorusOptions} opts */
  constructor(opts) {
    super();
    if (!opts || !opts.url) throw new ChorusError("bad_request", "new Chorus({url}) needs a url");
    /** @type {ChorusOptions} */ this._opts = opts;
    this._WS = opts.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (!this._WS) {
      throw new ChorusError("bad_request", "no WebSocket here: pass one, e.g. new Chorus({url, WebSocket}) with the 'ws' package in Node");
    }
    /** @type {State} */ this.state = "offline";
    /** The authenticated user (after the first welcome). */
    /** @type {string | undefined} */ this.user = undefined;
    /** @type {string | undefined} */ this.tenant = undefined;
    /** @type {string | undefined} */ this.session = undefined;
    /** The node serving the current connection. */
    /** @type {string | undefined} */ this.node = undefined;
    /** @type {Map<string, Room>} */ this._rooms = new Map();
    /** @type {Map<string, RoomState>} */ this._memberships = new Map();
    /** @type {PendingSend[]} */ this._outbox = [];
    /** @type {Map<number, Call>} */ this._calls = new Map();
    /** @type {Map<number, string>} join request id -> room */ this._joinIds = new Map();
    this._storage = opts.storage ?? memoryStorage();
    this._storageKey = `${opts.storageKey ?? "chorus"}:outbox`;
    this._limits = { ...DEFAULT_LIMITS };
    this._heartbeatMs = 25000;
    this._token = opts.token;
    this._tokenExp = opts.token ? jwtExp(opts.token) : undefined;
    this._resumeToken = /** @type {string | undefined} */ (undefined);
    this._resumeUntil = 0;
    /** @type {Set<string>} rooms the server re-joins by itself after a resume */
    this._resuming = new Set();
    this._conn = 0; // connection generation
    this._ws = /** @type {any} */ (null);
    this._online = false;
    this._nextId = 1;
    this._attempt = 0;
    this._retryAfterMs = 0;
    this._fatal = /** @type {ChorusError | null} */ (null);
    this._authRetried = false;
    this._closedForGood = false;
    this._started = false;
    this._loaded = /** @type {Promise<void> | null} */ (null);
    this._reconnectTimer = /** @type {any} */ (undefined);
    this._deadTimer = /** @type {any} */ (undefined);
    this._pumpTimer = /** @type {any} */ (undefined);
    this._drainTimer = /** @type {any} */ (undefined);
    /** @type {Set<string>} "room\ncid" of this client's latest committed sends */
    this._sentCids = new Set();
    this._bucket = { tokens: DEFAULT_LIMITS.send_burst, at: Date.now() };
    /** @type {{resolve: (w: any) => void, reject: (e: ChorusError) => void}[]} */
    this._connectWaiters = [];
    this._detachEnv = /** @type {(() => void) | null} */ (null);
  }

  /** The user's durable memberships with tips and unread counts, sorted by room. @returns {RoomState[]} */
  get rooms() {
    return [...this._memberships.values()].sort((a, b) => (a.room < b.room ? -1 : a.room > b.room ? 1 : 0));
  }

  /** Sends not yet acknowledged, in order. @returns {OutboxEntry[]} */
  get outbox() {
    return this._outbox.map((p) => p.entry);
  }

  /** The limits the server announced for this connection. @returns {Limits} */
  get limits() {
    return { ...this._limits };
  }

  /**
   * Connect; resolves at the first `welcome`. Network failures are retried with backoff (the
   * promise waits); a refusal that retrying cannot fix (bad token, version) rejects.
   * @returns {Promise<{user: string, session: string, node: string, resumed: boolean}>}
   */
  connect() {
    if (this._online) {
      return Promise.resolve({ user: /** @type {string} */ (this.user), session: /** @type {string} */ (this.session), node: /** @type {string} */ (this.node), resumed: false });
    }
    this._closedForGood = false;
    this._fatal = null;
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._started) {
      this._started = true;
      this._attachEnv();
      this._open();
    }
    return p;
  }

  /**
   * The room object of this name (one per name). Register handlers, then `join()`.
   * @param {string} name
   * @returns {Room}
   */
  room(name) {
    let r = this._rooms.get(name);
    if (!r) {
      r = new Room(this, name);
      this._rooms.set(name, r);
      const m = this._memberships.get(name);
      if (m) {
        r.tip = m.tip;
        r.lastRead = m.lastRead;
        r.lastDelivered = m.lastDelivered;
      }
    }
    return r;
  }

  /**
   * Replace the token in band (also called by the SDK itself on `refresh_needed` with
   * `getToken`). Resolves with the new expiry (Unix seconds).
   * @param {string} [token] a fresh JWT for the same user; default: `await getToken()`
   * @returns {Promise<number>}
   */
  async refresh(token) {
    if (token === undefined) {
      if (!this._opts.getToken) throw new ChorusError("invalid_state", "refresh() needs a token or the getToken option");
      token = await this._opts.getToken();
    }
    const prev = this._token;
    const prevExp = this._tokenExp;
    this._token = token;
    this._tokenExp = jwtExp(token);
    let f;
    try {
      f = await this._call({ op: "refresh", token }, "refreshed", true);
    } catch (e) {
      // Refused by the server (PROTOCOL.md 3.2): the old token stays in force, also for the
      // next hello. (A timeout or a lost connection keeps the new one: it may well be valid.)
      const refused = e instanceof ChorusError && !e.retryable && e.code !== "closed";
      if (refused && this._token === token) { this._token = prev; this._tokenExp = prevExp; }
      throw e;
    }
    this._tokenExp = f.exp;
    this._emit("refreshed", f.exp);
    return f.exp;
  }

  /**
   * End the session: the connection is closed, the resume token and the token are forgotten,
   * every room is dropped, pending sends and requests are rejected (`closed`) and removed from
   * the outbox storage. The object can `connect()` again as a new session.
   */
  close() {
    this._closedForGood = true;
    this._started = false;
    const err = closedError();
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._deadTimer);
    clearTimeout(this._pumpTimer);
    clearTimeout(this._drainTimer);
    this._detachEnv?.();
    this._detachEnv = null;
    const ws = this._ws;
    this._ws = null;
    this._online = false;
    if (ws) {
      detach(ws);
      try { ws.close(1000, "client closed"); } catch { /* already closed */ }
    }
    this._rejectSends(null, err);
    for (const c of this._calls.values()) { clearTimeout(c.timer); c.reject(closedError(c.frame.room, c.frame.op)); }
    this._calls.clear();
    this._joinIds.clear();
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
    for (const r of this._rooms.values()) {
      r.wanted = false;
      r.joined = false;
      clearTimeout(r._joinTimer);
      clearTimeout(r._readTimer);
      clearTimeout(r._deliveredTimer);
      for (const w of r._joinWaiters.splice(0)) w.reject(closedError(r.name, "join"));
      r._resetLive();
    }
    this._rooms.clear();
    this._memberships.clear();
    this._resumeToken = undefined;
    this._resumeUntil = 0;
    this._resuming.clear();
    if (this._opts.getToken) this._token = undefined; // a static token stays for a later connect()
    this._tokenExp = this._token ? jwtExp(this._token) : undefined;
    this.user = this.session = this.node = this.tenant = undefined;
    void Promise.resolve(this._storage.removeItem(this._storageKey)).catch(() => {});
    this._setState("closed");
  }

  // ---- connection -------------------------------------------------------------------------

  /** @param {State} s */
  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit("state", s);
  }

  async _open() {
    if (this._closedForGood) return;
    const conn = ++this._conn;
    this._setState("connecting");
    if (!this._loaded) this._loaded = this._loadOutbox();
    let token;
    try {
      await this._loaded;
      token = await this._tokenForConnect();
    } catch (e) {
      if (conn !== this._conn || this._closedForGood) return;
      this._emit("error", toError(e, "unauthorized"));
      this._scheduleReconnect();
      return;
    }
    if (conn !== this._conn || this._closedForGood) return;
    let url = this._opts.url;
    if (this._opts.devUser && !token) {
      url += (url.includes("?") ? "&" : "?") + "user=" + encodeURIComponent(this._opts.devUser);
    }
    let ws;
    try {
      ws = new this._WS(url, "chorus.v1");
    } catch (e) {
      this._emit("error", toError(e, "unavailable"));
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._arm(HANDSHAKE_TIMEOUT_MS + 5000);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      /** @type {any} */
      const hello = { op: "hello", v: 1 };
      if (token) hello.token = token;
      if (this._opts.device) hello.device = this._opts.device;
      if (this._opts.meta !== undefined) hello.meta = this._opts.meta;
      this._resuming.clear();
      if (this._resumeToken && Date.now() < this._resumeUntil) {
        /** @type {Record<string, number>} */
        const rooms = {};
        for (const r of this._rooms.values()) {
          if (r.wanted && r.lastSeq !== undefined) {
            rooms[r.name] = r.lastSeq;
            this._resuming.add(r.name);
          }
        }
        hello.resume = { token: this._resumeToken, rooms };
      }
      this._sendNow(hello);
    };
    ws.onmessage = (/** @type {any} */ ev) => {
      if (this._ws !== ws) return;
      this._arm(2 * this._heartbeatMs);
      let data = ev.data;
      if (typeof data !== "string") {
        if (data && typeof data.toString === "function" && !(data instanceof ArrayBuffer)) data = data.toString();
        else return;
      }
      let f;
      try {
        f = JSON.parse(data);
      } catch {
        return;
      }
      if (!f || typeof f !== "object") return;
      try {
        this._onFrame(f);
      } catch (e) {
        // A frame of a known op in a shape this SDK does not understand: skip it, keep the connection.
        this._opts.logger?.warn("chorus: could not handle a frame", f.op, e);
      }
    };
    ws.onerror = () => {};
    ws.onclose = (/** @type {any} */ ev) => {
      if (this._ws !== ws) return;
      this._onClose(ev?.code ?? 1006, ev?.reason ?? "");
    };
  }

  async _tokenForConnect() {
    const get = this._opts.getToken;
    if (!get) return this._token;
    const soon = this._tokenExp !== undefined && this._tokenExp * 1000 - Date.now() < 60000;
    if (!this._token || this._tokenExp === undefined || soon) {
      this._token = await get();
      this._tokenExp = jwtExp(this._token);
    }
    return this._token;
  }

  /** No frame from the server for `ms`: the connection is dead; drop it without a handshake. @param {number} ms */
  _arm(ms) {
    clearTimeout(this._deadTimer);
    this._deadTimer = setTimeout(() => this._drop(1006, "no frame from the server"), ms);
  }

  /** @param {number} code @param {string} reason */
  _drop(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    detach(ws);
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close();
    } catch { /* already gone */ }
    this._onClose(code, reason);
  }

  /** @param {number} code @param {string} reason */
  _onClose(code, reason) {
    clearTimeout(this._deadTimer);
    const ws = this._ws;
    if (ws) detach(ws);
    this._ws = null;
    this._online = false;
    this._emit("close", { code, reason });
    clearTimeout(this._drainTimer);
    for (const r of this._rooms.values()) {
      r.joined = false;
      r._typingActive = false; // the typing state died with the connection
      clearTimeout(r._readTimer);
      clearTimeout(r._deliveredTimer);
      r._readTimer = r._deliveredTimer = undefined;
    }
    for (const p of this._outbox) {
      if (p.inFlight) { p.inFlight = false; clearTimeout(p.timer); }
    }
    this._joinIds.clear();
    // `once` requests are not repeated on the next connection: they fail here.
    for (const [id, c] of [...this._calls]) {
      if (!c.once || c.conn !== this._conn) continue;
      this._calls.delete(id);
      clearTimeout(c.timer);
      c.reject(new ChorusError("unavailable", "the connection was lost", { retryable: true, request: c.frame.op, room: c.frame.room }));
    }
    if (this._closedForGood) return;
    const fatal = this._fatalFor(code, reason);
    if (fatal) {
      this._fatal = fatal;
      this._started = false;
      this._emit("error", fatal);
      for (const w of this._connectWaiters.splice(0)) w.reject(fatal);
      for (const c of this._calls.values()) { clearTimeout(c.timer); c.reject(fatal); }
      this._calls.clear();
      for (const r of this._rooms.values()) for (const w of r._joinWaiters.splice(0)) w.reject(fatal);
      this._setState("closed");
      return;
    }
    if (code === 4502 || code === 4501) this._token = this._opts.getToken ? undefined : this._token;
    if (code === 4507) this._resumeToken = undefined; // another connection took the session: start anew
    this._setState("offline");
    this._scheduleReconnect();
  }

  /** @param {number} code @param {string} reason @returns {ChorusError | null} */
  _fatalFor(code, reason) {
    const mk = () => new ChorusError(reason.split(":")[0] || `close_${code}`, reason || `closed with ${code}`, { closeCode: code });
    if (FATAL_WS_CODES.has(code)) return mk();
    if (code === 4502) return this._opts.getToken ? null : mk(); // a fresh token fixes it
    if (code === 4501) {
      // One more try with a token fetched anew (keys rotate); then stop.
      if (this._opts.getToken && !this._authRetried) { this._authRetried = true; return null; }
      return mk();
    }
    if (code === 4507) return null;
    if (code >= 4500 && code <= 4999) return mk();
    return null;
  }

  _scheduleReconnect() {
    if (this._closedForGood) return;
    clearTimeout(this._reconnectTimer);
    const delay = this._retryAfterMs > 0
      ? this._retryAfterMs + Math.random() * 1000
      : jitter(this._opts.reconnect?.minMs ?? 500, this._opts.reconnect?.maxMs ?? 30000, this._attempt);
    this._retryAfterMs = 0;
    this._attempt++;
    this._reconnectTimer = setTimeout(() => this._open(), delay);
  }

  /** Reconnect now (after the browser says it is online again, say). */
  _reconnectNow() {
    if (this._closedForGood || !this._started || this._ws) return;
    clearTimeout(this._reconnectTimer);
    this._open();
  }

  /** Browser `online`/`offline` and page visibility: check the connection at once. */
  _attachEnv() {
    // connect() after a fatal close attaches again: drop the earlier listeners first.
    this._detachEnv?.();
    this._detachEnv = null;
    const g = /** @type {any} */ (globalThis);
    if (typeof g.addEventListener !== "function") return;
    const check = () => this._checkLiveness();
    const vis = () => { if (g.document?.visibilityState === "visible") check(); };
    g.addEventListener("online", check);
    g.addEventListener("offline", check);
    g.document?.addEventListener?.("visibilitychange", vis);
    this._detachEnv = () => {
      g.removeEventListener("online", check);
      g.removeEventListener("offline", check);
      g.document?.removeEventListener?.("visibilitychange", vis);
    };
  }

  /**
   * Is the connection alive? Pings the server; no answer within `livenessTimeoutMs`
   * (default 3000) drops the connection and reconnects at once. Without a connection,
   * reconnects at once instead of waiting for the backoff.
   */
  _checkLiveness() {
    if (this._closedForGood || !this._started) return;
    if (!this._ws) { this._attempt = 0; this._reconnectNow(); return; }
    if (!this._online) return;
    const conn = this._conn;
    const timeout = this._opts.livenessTimeoutMs ?? 3000;
    this._call({ op: "ping" }, "pong", false, timeout).catch(() => {
      if (conn === this._conn && this._ws) {
        this._attempt = 0;
        this._drop(1006, "liveness check failed");
      }
    });
  }

  // ---- frames -----------------------------------------------------------------------------

  /** @param {any} f */
  _sendNow(f) {
    try {
      this._ws?.send(JSON.stringify(f));
    } catch { /* the close handler reconnects */ }
  }

  /** A frame for the current connection, dropped while offline. @param {any} f */
  _raw(f) {
    if (this._online) this._sendNow(f);
  }

  /** @param {any} f */
  _onFrame(f) {
    switch (f.op) {
      case "ping": this._sendNow({ op: "pong" }); return;
      case "welcome": this._onWelcome(f); return;
      case "msg": this._onMsg(f); return;
      case "joined": this._onJoined(f); return;
      case "ack": this._onAck(f); return;
      case "error": this._onError(f); return;
      case "receipt": this._onReceipt(f); return;
      case "typing": {
        const r = this._rooms.get(f.room);
        if (r && r.wanted && f.user !== undefined) r._typingEvent(f.user, f.device, f.active !== false);
        return;
      }
      case "presence_diff": this._onPresenceDiff(f); return;
      case "reconnect": this._onReconnectFrame(f); return;
      case "refresh_needed": this._onRefreshNeeded(); return;
      default: this._onReply(f);
    }
  }

  /**
   * The node is draining (PROTOCOL.md 6.14): send nothing more on this connection (what is
   * unanswered stays in the outbox and is resent after the reconnect), wait for the close,
   * and close it ourselves if it does not come.
   * @param {any} f
   */
  _onReconnectFrame(f) {
    const after = Number(f.retry_after_ms);
    this._retryAfterMs = Number.isFinite(after) && after >= 0 ? Math.min(after, 60000) : 500;
    this._online = false;
    clearTimeout(this._pumpTimer);
    const ws = this._ws;
    clearTimeout(this._drainTimer);
    this._drainTimer = setTimeout(() => {
      if (this._ws === ws) this._drop(4000, "shutdown");
    }, 5000);
  }

  /** @param {any} f */
  _onWelcome(f) {
    this._online = true;
    this._attempt = 0;
    this._authRetried = false;
    this.user = f.user;
    this.tenant = f.tenant;
    this.session = f.session;
    this.node = f.node;
    this._heartbeatMs = f.heartbeat_ms ?? 25000;
    this._arm(2 * this._heartbeatMs);
    this._limits = { ...DEFAULT_LIMITS, ...(f.limits ?? {}) };
    this._bucket = { tokens: this._limits.send_burst, at: Date.now() };
    this._resumeToken = f.resume_token;
    this._resumeUntil = Date.now() + (f.resume_ttl_ms ?? 0) - 5000;
    if (!f.resumed) this._resuming.clear();
    this._memberships.clear();
    for (const s of f.rooms ?? []) {
      const st = { room: s.room, tip: s.tip, lastRead: s.last_read, lastDelivered: s.last_delivered, unread: s.unread };
      this._memberships.set(s.room, st);
      const r = this._rooms.get(s.room);
      if (r) {
        r.tip = Math.max(r.tip, s.tip);
        r.lastRead = Math.max(r.lastRead, s.last_read);
        r.lastDelivered = Math.max(r.lastDelivered, s.last_delivered);
        this._unreadChanged(r);
      }
    }
    for (const p of this._outbox) if (p.entry.user == null) p.entry.user = f.user;
    this._setState("online");
    this._emit("welcome", { user: f.user, session: f.session, node: f.node, resumed: !!f.resumed });
    this._emit("rooms", this.rooms);
    for (const w of this._connectWaiters.splice(0)) {
      w.resolve({ user: f.user, session: f.session, node: f.node, resumed: !!f.resumed });
    }
    // Requests that had not been answered go out again on this connection.
    for (const c of [...this._calls.values()]) if (c.conn !== this._conn) this._transmit(c);
    for (const r of this._rooms.values()) {
      if (r.wanted && !this._resuming.has(r.name)) this._sendJoin(r);
    }
  }

  /** @param {Room} r */
  _sendJoin(r) {
    if (!this._online || !r.wanted) return;
    clearTimeout(r._joinTimer);
    const id = this._nextId++;
    /** @type {any} */
    const f = { op: "join", id, room: r.name };
    if (r.lastSeq !== undefined) f.since = r.lastSeq;
    this._joinIds.set(id, r.name);
    this._sendNow(f);
  }

  /** @param {any} f */
  _onJoined(f) {
    if (f.id !== undefined) this._joinIds.delete(f.id);
    this._resuming.delete(f.room);
    const r = this._rooms.get(f.room);
    if (!r || !r.wanted) return;
    r.joined = true;
    r._joinAttempt = 0;
    r.tip = Math.max(r.tip, f.tip);
    r.lastRead = Math.max(r.lastRead, f.last_read ?? 0);
    if (r.lastSeq === undefined) r.lastSeq = f.tip; // a first join starts live after the tip
    const last = /** @type {number} */ (r.lastSeq);
    if (last < f.tip) {
      // Not replayed (more than max_replay missed, or retention): page history up to the tip.
      r._target = Math.max(r._target, f.tip);
      r._repair();
    }
    if (Array.isArray(f.presence)) {
      r.hot = f.presence.length === 0 && (f.online ?? 0) > 0;
      r.online = f.online ?? f.presence.length;
      r._setPresence(f.presence);
    }
    const m = this._memberships.get(r.name) ?? { room: r.name, tip: 0, lastRead: 0, lastDelivered: 0, unread: 0 };
    this._memberships.set(r.name, m);
    this._roomChanged(r);
    /** @type {Joined} */
    const j = { tip: f.tip, lastRead: f.last_read ?? 0, recovered: f.recovered !== false, replayed: f.replayed ?? 0, online: r.online };
    for (const w of r._joinWaiters.splice(0)) w.resolve(j);
    r._emit("joined", j);
    r._scheduleReceipts();
    this._pump();
  }

  /** @param {any} f */
  _onMsg(f) {
    const r = this._rooms.get(f.room);
    if (!r || !r.wanted) return;
    r._accept(toMessage(f));
  }

  /**
   * The user's own message arrived: it proves the commit of an outbox entry with its cid.
   * Returns whether this client sent it.
   * @param {Room} r @param {Message} m @returns {boolean}
   */
  _ownMessage(r, m) {
    const i = this._outbox.findIndex((p) => p.entry.room === r.name && p.entry.cid === m.cid);
    if (i < 0) return this._sentCids.has(`${r.name}\n${m.cid}`);
    const p = this._outbox[i];
    // On the sending connection the ack follows right away; otherwise (a replay after a
    // reconnect) this is the only proof we get without resending.
    if (p.inFlight && p.conn === this._conn) return true;
    this._settleSend(i, { seq: m.seq, msgId: m.id, ts: m.ts, duplicate: true });
    return true;
  }

  /** @param {any} f */
  _onAck(f) {
    const i = this._outbox.findIndex((p) => p.entry.room === f.room && p.entry.cid === f.cid);
    if (i < 0) return;
    this._settleSend(i, { seq: f.seq, msgId: f.msg_id, ts: f.ts, duplicate: !!f.duplicate });
  }

  /** @param {number} i @param {Ack} ack */
  _settleSend(i, ack) {
    const [p] = this._outbox.splice(i, 1);
    clearTimeout(p.timer);
    // Remembered (the latest 1,000) so that its msg, if it comes after the ack, is known as ours.
    this._sentCids.add(`${p.entry.room}\n${p.entry.cid}`);
    if (this._sentCids.size > 1000) this._sentCids.delete(/** @type {string} */ (this._sentCids.values().next().value));
    this._saveOutbox();
    p.resolve?.(ack);
    this._rooms.get(p.entry.room)?._emit("ack", { cid: p.entry.cid, ...ack });
    this._pump();
  }

  /** @param {any} f */
  _onError(f) {
    const err = ChorusError.fromFrame(f);
    if (f.cid !== undefined && f.request === "send") {
      const p = this._outbox.find((q) => q.entry.room === f.room && q.entry.cid === f.cid);
      if (p) { this._sendFailed(p, f, err); return; }
    }
    if (f.request === "join" || (f.id !== undefined && this._joinIds.has(f.id))) {
      const room = f.room ?? this._joinIds.get(f.id);
      if (f.id !== undefined) this._joinIds.delete(f.id);
      this._resuming.delete(room);
      const r = room !== undefined ? this._rooms.get(room) : undefined;
      if (r) { this._joinFailed(r, err); return; }
    }
    if (f.request === "refresh" && f.id === undefined && f.room !== undefined) {
      // The new token no longer allows this room: it was left.
      const r = this._rooms.get(f.room);
      this._memberships.delete(f.room);
      if (r) {
        r.wanted = false;
        r.joined = false;
        this._rejectSends(r.name, err);
        r._emit("error", err);
      }
      this._emit("rooms", this.rooms);
      return;
    }
    if (f.id !== undefined && this._calls.has(f.id)) {
      const c = /** @type {Call} */ (this._calls.get(f.id));
      this._calls.delete(f.id);
      clearTimeout(c.timer);
      c.reject(err);
      return;
    }
    if (f.room !== undefined && (f.code === "not_joined")) {
      const r = this._rooms.get(f.room);
      if (r && r.wanted) { r.joined = false; this._sendJoin(r); return; }
    }
    const r = f.room !== undefined ? this._rooms.get(f.room) : undefined;
    if (r) r._emit("error", err);
    else this._emit("error", err);
  }

  /** @param {Room} r @param {ChorusError} err */
  _joinFailed(r, err) {
    if (err.retryable && r.wanted) {
      clearTimeout(r._joinTimer);
      r._joinTimer = setTimeout(() => this._sendJoin(r), err.retryAfterMs ?? jitter(500, 30000, r._joinAttempt++));
      return;
    }
    r.wanted = false;
    r.joined = false;
    for (const w of r._joinWaiters.splice(0)) w.reject(err);
    this._rejectSends(r.name, err);
    r._emit("error", err);
  }

  /** @param {any} f */
  _onReceipt(f) {
    const r = this._rooms.get(f.room);
    if (!r || !r.wanted) return;
    for (const e of f.receipts ?? []) {
      const cur = r.receipts.get(e.user) ?? { read: 0, delivered: 0 };
      if (typeof e.read === "number") cur.read = Math.max(cur.read, e.read);
      if (typeof e.delivered === "number") cur.delivered = Math.max(cur.delivered, e.delivered);
      cur.delivered = Math.max(cur.delivered, cur.read);
      r.receipts.set(e.user, cur);
      if (e.user === this.user) {
        const before = r.lastRead;
        r.lastRead = Math.max(r.lastRead, cur.read);
        r.lastDelivered = Math.max(r.lastDelivered, cur.delivered);
        if (r.lastRead !== before) this._roomChanged(r);
      }
      r._emit("receipt", { user: e.user, read: cur.read, delivered: cur.delivered });
    }
  }

  /** @param {any} f */
  _onPresenceDiff(f) {
    const r = this._rooms.get(f.room);
    if (!r || !r.wanted) return;
    if (typeof f.online === "number") {
      r.hot = true;
      r.online = f.online;
      r.presence.clear();
      r._emit("presence", r.presence);
      return;
    }
    if (r.hot) {
      // Back under the threshold: rebuild the list from a snapshot.
      r.hot = false;
      r.fetchPresence().catch(() => {});
      return;
    }
    for (const u of f.joined ?? []) r.presence.set(u.user, toDevices(u.devices));
    for (const u of f.left ?? []) r.presence.delete(u);
    r.online = r.presence.size;
    r._emit("presence", r.presence);
  }

  _onRefreshNeeded() {
    this._emit("refreshNeeded");
    if (!this._opts.getToken) return;
    this.refresh().catch((e) => this._emit("error", toError(e, "unauthorized")));
  }

  /** A reply to a request with an id. @param {any} f */
  _onReply(f) {
    if (f.id === undefined) return;
    const c = this._calls.get(f.id);
    if (!c || c.replyOp !== f.op) return;
    this._calls.delete(f.id);
    clearTimeout(c.timer);
    c.resolve(f);
  }

  /**
   * A request answered by `replyOp`; waits for a connection, and goes out again on the next
   * connection if this one ends first. `once`: not repeated on another connection.
   * @param {any} frame @param {string} replyOp @param {boolean} [once] @param {number} [timeoutMs]
   * @returns {Promise<any>}
   */
  _call(frame, replyOp, once = false, timeoutMs) {
    if (this._closedForGood) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      /** @type {Call} */
      const c = { frame, replyOp, resolve, reject, id: 0, conn: -1, once };
      const ms = timeoutMs ?? this._opts.requestTimeoutMs ?? 15000;
      c.timer = setTimeout(() => {
        this._calls.delete(c.id);
        reject(new ChorusError("timeout", `no ${replyOp} within ${ms} ms`, { retryable: true, request: frame.op, room: frame.room }));
      }, ms);
      if (once && !this._online) {
        clearTimeout(c.timer);
        reject(new ChorusError("unavailable", "not connected", { retryable: true, request: frame.op, room: frame.room }));
        return;
      }
      this._transmit(c);
    });
  }

  /** @param {Call} c */
  _transmit(c) {
    this._calls.delete(c.id);
    c.id = this._nextId++;
    this._calls.set(c.id, c);
    if (!this._online) return; // sent at the next welcome
    c.conn = this._conn;
    this._sendNow({ ...c.frame, id: c.id });
  }

  // ---- sends ------------------------------------------------------------------------------

  /** @param {Room} room @param {any} body @param {{meta?: any, cid?: string}} opts @returns {Promise<Ack>} */
  _enqueueSend(room, body, opts) {
    if (this._closedForGood || this._rooms.get(room.name) !== room) return Promise.reject(closedError(room.name, "send"));
    if (!room.wanted) {
      return Promise.reject(new ChorusError("not_joined", `join room '${room.name}' before sending to it`, { request: "send", room: room.name }));
    }
    if (body === null || body === undefined) {
      return Promise.reject(new ChorusError("bad_request", "body must be a JSON value other than null", { request: "send", room: room.name }));
    }
    let size;
    try {
      size = utf8Length(JSON.stringify(body)) + (opts.meta != null ? utf8Length(JSON.stringify(opts.meta)) : 0);
    } catch (e) {
      return Promise.reject(new ChorusError("bad_request", `body is not JSON: ${e}`, { request: "send", room: room.name }));
    }
    if (size > this._limits.max_message_bytes) {
      return Promise.reject(new ChorusError("message_too_large", `body + meta is ${size} bytes; the limit is ${this._limits.max_message_bytes}`, { request: "send", room: room.name }));
    }
    const cid = opts.cid ?? uuid();
    /** @type {OutboxEntry} */
    const entry = { room: room.name, cid, body, user: this.user ?? null, createdAt: Date.now() };
    if (opts.meta != null) entry.meta = opts.meta;
    return new Promise((resolve, reject) => {
      this._outbox.push({ entry, resolve, reject, inFlight: false, conn: -1, attempt: 0, retryAt: 0 });
      this._saveOutbox();
      this._pump();
    });
  }

  /**
   * Send what the outbox holds: per room in order, at most `sendWindow` un-acked at once,
   * paced by the announced `sends_per_sec`/`send_burst`.
   */
  _pump() {
    clearTimeout(this._pumpTimer);
    this._pumpTimer = undefined;
    if (!this._online) return;
    const window = Math.max(1, this._opts.sendWindow ?? 1);
    const now = Date.now();
    /** @type {Map<string, number>} */
    const inFlight = new Map();
    /** @type {Set<string>} rooms whose head is waiting for a retry: keep their order */
    const blocked = new Set();
    let wakeAt = Infinity;
    for (const p of this._outbox) {
      const name = p.entry.room;
      if (p.inFlight) { inFlight.set(name, (inFlight.get(name) ?? 0) + 1); continue; }
      if (blocked.has(name)) continue;
      const r = this._rooms.get(name);
      if (!r || !r.joined || (p.entry.user != null && p.entry.user !== this.user)) { blocked.add(name); continue; }
      if ((inFlight.get(name) ?? 0) >= window) { blocked.add(name); continue; }
      if (p.retryAt > now) { blocked.add(name); wakeAt = Math.min(wakeAt, p.retryAt); continue; }
      const wait = this._takeToken(now);
      if (wait > 0) { wakeAt = Math.min(wakeAt, now + wait); break; }
      this._transmitSend(p);
      inFlight.set(name, (inFlight.get(name) ?? 0) + 1);
    }
    if (wakeAt !== Infinity) this._pumpTimer = setTimeout(() => this._pump(), Math.max(1, wakeAt - now));
  }

  /** Token bucket of the announced send limits; returns ms to wait, or 0 after taking one. @param {number} now */
  _takeToken(now) {
    const rate = Math.max(1, this._limits.sends_per_sec);
    const burst = Math.max(1, this._limits.send_burst);
    const b = this._bucket;
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) * rate) / 1000);
    b.at = now;
    if (b.tokens >= 1) { b.tokens -= 1; return 0; }
    return Math.ceil(((1 - b.tokens) * 1000) / rate);
  }

  /** @param {PendingSend} p */
  _transmitSend(p) {
    p.inFlight = true;
    p.conn = this._conn;
    /** @type {any} */
    const f = { op: "send", id: this._nextId++, room: p.entry.room, cid: p.entry.cid, body: p.entry.body };
    if (p.entry.meta !== undefined) f.meta = p.entry.meta;
    clearTimeout(p.timer);
    const ms = this._opts.ackTimeoutMs ?? 15000;
    p.timer = setTimeout(() => {
      // No ack nor error: resend with the same cid (a stored one comes back as a duplicate).
      if (p.inFlight && p.conn === this._conn) { p.inFlight = false; this._pump(); }
    }, ms);
    this._sendNow(f);
  }

  /** @param {PendingSend} p @param {any} f @param {ChorusError} err */
  _sendFailed(p, f, err) {
    p.inFlight = false;
    clearTimeout(p.timer);
    if (f.code === "not_joined") {
      const r = this._rooms.get(p.entry.room);
      if (r && r.wanted) {
        if (r.joined) { r.joined = false; this._sendJoin(r); }
        return; // resent after the room's joined
      }
    }
    if (err.retryable) {
      p.retryAt = Date.now() + (err.retryAfterMs ?? jitter(SEND_RETRY_BASE_MS, SEND_RETRY_CAP_MS, p.attempt));
      p.attempt++;
      this._pump();
      return;
    }
    const i = this._outbox.indexOf(p);
    if (i >= 0) this._outbox.splice(i, 1);
    this._saveOutbox();
    p.reject?.(err);
    this._rooms.get(p.entry.room)?._emit("error", err);
    this._pump();
  }

  /** Reject (and drop) every pending send of a room, or of all rooms. @param {string | null} room @param {ChorusError} err */
  _rejectSends(room, err) {
    const keep = [];
    for (const p of this._outbox) {
      if (room === null || p.entry.room === room) {
        clearTimeout(p.timer);
        // Each send gets its own error, naming its room and cid.
        p.reject?.(new ChorusError(err.code, err.message, {
          retryable: err.retryable, retryAfterMs: err.retryAfterMs, closeCode: err.closeCode,
          request: "send", room: p.entry.room, cid: p.entry.cid,
        }));
      } else {
        keep.push(p);
      }
    }
    if (keep.length !== this._outbox.length) {
      this._outbox = keep;
      this._saveOutbox();
    }
  }

  async _loadOutbox() {
    let text;
    try {
      text = await this._storage.getItem(this._storageKey);
    } catch {
      return;
    }
    if (!text) return;
    try {
      const entries = JSON.parse(text);
      if (!Array.isArray(entries)) return;
      const known = new Set(this._outbox.map((p) => `${p.entry.room}\n${p.entry.cid}`));
      const loaded = [];
      for (const e of entries) {
        if (!e || typeof e.room !== "string" || typeof e.cid !== "string" || known.has(`${e.room}\n${e.cid}`)) continue;
        loaded.push({ entry: e, inFlight: false, conn: -1, attempt: 0, retryAt: 0 });
      }
      this._outbox = [...loaded, ...this._outbox];
    } catch { /* unreadable: ignore */ }
  }

  _saveOutbox() {
    const entries = this._outbox.map((p) => p.entry);
    const op = entries.length
      ? this._storage.setItem(this._storageKey, JSON.stringify(entries))
      : this._storage.removeItem(this._storageKey);
    void Promise.resolve(op).catch((e) => this._opts.logger?.warn("chorus: outbox storage failed", e));
  }

  /** @param {Room} r */
  _roomChanged(r) {
    const m = this._memberships.get(r.name);
    if (m) {
      m.tip = Math.max(m.tip, r.tip);
      m.lastRead = Math.max(m.lastRead, r.lastRead);
      m.lastDelivered = Math.max(m.lastDelivered, r.lastDelivered);
      m.unread = Math.max(0, m.tip - m.lastRead);
    }
    this._unreadChanged(r);
    this._emit("rooms", this.rooms);
  }

  /** Emit `unread` on the room when its count differs from the last one emitted. @param {Room} r */
  _unreadChanged(r) {
    const n = r.unread;
    if (n === r._unreadEmitted) return;
    r._unreadEmitted = n;
    r._emit("unread", n);
  }
}

/** @param {any} ws */
function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
}

/** @param {any} e @param {string} code @returns {ChorusError} */
function toError(e, code) {
  if (e instanceof ChorusError) return e;
  return new ChorusError(code, String(e?.message ?? e), { retryable: true });
}
