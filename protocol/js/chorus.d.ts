// Types of the chorus JavaScript SDK (chorus.js). The names follow the wire protocol's
// JSON Schemas (protocol/schema/) and PROTOCOL.md, with camelCase fields.

export declare const VERSION: string;

/** A room message: each seq once, in order, gap-free. */
export interface Message {
  room: string;
  seq: number;
  /** Server-assigned id (UUID v7). */
  id: string;
  sender: string;
  /** The sender's client message id. */
  cid: string;
  body: any;
  meta?: any;
  /** Commit time, Unix ms. */
  ts: number;
}

export interface DeviceInfo {
  device: string;
  node: string;
  /** Unix ms when the connection's hello was accepted. */
  since: number;
  meta?: any;
}

export interface PresenceUser {
  user: string;
  devices: DeviceInfo[];
}

/** A durable membership (welcome.rooms), kept up to date. */
export interface RoomState {
  room: string;
  tip: number;
  lastRead: number;
  lastDelivered: number;
  unread: number;
}

export interface Limits {
  max_frame_bytes: number;
  max_message_bytes: number;
  max_rooms: number;
  sends_per_sec: number;
  send_burst: number;
  max_history_page: number;
  max_replay: number;
}

export interface Receipt {
  user: string;
  read: number;
  delivered: number;
}

export interface Typing {
  user: string;
  device: string;
  active: boolean;
}

/** What a send resolves with, after the durable commit. */
export interface Ack {
  seq: number;
  msgId: string;
  ts: number;
  /** The cid had been stored before (a retry); the message is not delivered again. */
  duplicate: boolean;
}

export interface HistoryPage {
  /** Ascending seq. */
  messages: Message[];
  hasMore: boolean;
}

export interface Joined {
  tip: number;
  lastRead: number;
  recovered: boolean;
  replayed: number;
  online: number;
}

export interface Welcome {
  user: string;
  session: string;
  node: string;
  resumed: boolean;
}

export type State = "connecting" | "online" | "offline" | "closed";

/** Where the outbox is kept: the localStorage API (sync) or AsyncStorage's (promises). */
export interface Storage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

export interface OutboxEntry {
  room: string;
  cid: string;
  body: any;
  meta?: any;
  user?: string | null;
  createdAt: number;
}

export interface ChorusOptions {
  /** The WebSocket URL, e.g. "wss://chat.example.com/ws". */
  url: string;
  /** A JWT. */
  token?: string;
  /** Returns a fresh JWT; called at connect, on refresh_needed and after an expiry. */
  getToken?: () => string | Promise<string>;
  /** Development mode only: connect as this user (?user=). */
  devUser?: string;
  /** Device name shown in presence (default "default"). */
  device?: string;
  /** Presence metadata shown to other members (a small JSON object). */
  meta?: any;
  /** A WebSocket constructor (Node: the `ws` package's); default: the global one. */
  WebSocket?: any;
  /** Outbox storage; default: memory. Browsers: localStorageAdapter(). */
  storage?: Storage;
  /** Prefix of the storage key (default "chorus"). */
  storageKey?: string;
  /** Un-acked sends per room at once (default 1: strict order of your own messages). */
  sendWindow?: number;
  /** Resend (same cid) when no ack or error came within this (default 15000 ms). */
  ackTimeoutMs?: number;
  /** history/presence/leave/refresh requests reject with `timeout` after this (default 15000 ms). */
  requestTimeoutMs?: number;
  /** Reconnect backoff: full jitter between 0 and min(maxMs, minMs * 2^attempt); default 500 / 30000. */
  reconnect?: { minMs?: number; maxMs?: number };
  /** Send `delivered` for received messages (coalesced); default true. */
  autoDelivered?: boolean;
  /** Your own message does not count as unread (a coalesced `read` is sent); default true. */
  readOwnMessages?: boolean;
  /** A liveness ping must be answered within this (default 3000 ms). */
  livenessTimeoutMs?: number;
  logger?: { warn: (...args: any[]) => void };
}

/** Every failure: server error frames, fatal close codes, local checks. */
export declare class ChorusError extends Error {
  constructor(
    code: string,
    message: string,
    extra?: {
      retryable?: boolean;
      retryAfterMs?: number;
      request?: string;
      room?: string;
      cid?: string;
      closeCode?: number;
    },
  );
  /** PROTOCOL.md error code or close reason, or `closed`, `left`, `timeout`. */
  code: string;
  retryable: boolean;
  retryAfterMs?: number;
  request?: string;
  room?: string;
  cid?: string;
  /** For a fatal close: its code. */
  closeCode?: number;
  static fromFrame(f: any): ChorusError;
}

export declare function memoryStorage(): Storage;
export declare function localStorageAdapter(ls?: any): Storage;

declare class Emitter<Events extends { [K in keyof Events]: (...args: any[]) => void }> {
  /** Subscribe; returns a function that unsubscribes. */
  on<E extends keyof Events & string>(event: E, fn: Events[E]): () => void;
  off<E extends keyof Events & string>(event: E, fn: Events[E]): void;
}

export interface RoomEvents {
  message: (m: Message) => void;
  presence: (presence: Map<string, DeviceInfo[]>) => void;
  typing: (e: Typing) => void;
  receipt: (e: Receipt) => void;
  unread: (n: number) => void;
  joined: (j: Joined) => void;
  ack: (a: Ack & { cid: string }) => void;
  error: (e: ChorusError) => void;
  /** Messages from..to no longer exist (deleted by retention): skipped. */
  gap: (g: { from: number; to: number }) => void;
  /** A handler of this room threw (without a listener here it goes to console.error). */
  handlerError: (e: unknown, event: string) => void;
}

export interface ChorusEvents {
  state: (s: State) => void;
  welcome: (w: Welcome) => void;
  rooms: (rooms: RoomState[]) => void;
  close: (c: { code: number; reason: string }) => void;
  error: (e: ChorusError) => void;
  refreshed: (exp: number) => void;
  refreshNeeded: () => void;
  handlerError: (e: unknown, event: string) => void;
}

export declare class Room extends Emitter<RoomEvents> {
  readonly client: Chorus;
  readonly name: string;
  /** Live presence: user -> devices (empty while the room is hot). */
  readonly presence: Map<string, DeviceInfo[]>;
  online: number;
  hot: boolean;
  readonly receipts: Map<string, { read: number; delivered: number }>;
  readonly typers: Map<string, string>;
  lastSeq: number | undefined;
  tip: number;
  lastRead: number;
  lastDelivered: number;
  wanted: boolean;
  joined: boolean;
  readonly unread: number;
  join(opts?: { since?: number }): Promise<Joined>;
  send(body: any, opts?: { meta?: any; cid?: string }): Promise<Ack>;
  history(q?: { before?: number; after?: number; limit?: number }): Promise<HistoryPage>;
  fetchPresence(): Promise<Map<string, DeviceInfo[]>>;
  read(seq: number): void;
  delivered(seq: number): void;
  typing(active?: boolean): void;
  leave(opts?: { keepMembership?: boolean }): Promise<void>;
}

export declare class Chorus extends Emitter<ChorusEvents> {
  constructor(opts: ChorusOptions);
  state: State;
  user: string | undefined;
  tenant: string | undefined;
  session: string | undefined;
  node: string | undefined;
  /** The user's durable memberships with tips and unread counts, sorted by room. */
  readonly rooms: RoomState[];
  /** Sends not yet acknowledged, in order. */
  readonly outbox: OutboxEntry[];
  readonly limits: Limits;
  connect(): Promise<Welcome>;
  room(name: string): Room;
  refresh(token?: string): Promise<number>;
  close(): void;
}
