// Compiled (never run) by `npm run typecheck`: the README's usage type-checks against chorus.d.ts.
import { Chorus, ChorusError, localStorageAdapter, memoryStorage } from "../chorus.js";
import type { Ack, HistoryPage, Message, RoomState, State } from "../chorus.js";

export async function example(jwt: () => Promise<string>): Promise<void> {
  const client = new Chorus({ url: "ws://127.0.0.1:8080/ws", getToken: jwt, device: "web", storage: memoryStorage() });
  client.on("state", (s: State) => console.log(s));
  const w = await client.connect();
  console.log(w.user, w.session, w.resumed);
  const room = client.room("general");
  room.on("message", (m: Message) => console.log(m.seq, m.sender, m.body));
  room.on("presence", (map) => console.log([...map.keys()]));
  room.on("typing", (e) => console.log(e.user, e.active));
  room.on("receipt", (e) => console.log(e.user, e.read, e.delivered));
  const j = await room.join();
  console.log(j.tip, j.recovered);
  const ack: Ack = await room.send({ text: "hi" }, { meta: { kind: "text" } });
  console.log(ack.seq, ack.msgId, ack.duplicate);
  const page: HistoryPage = await room.history({ before: ack.seq, limit: 20 });
  console.log(page.messages.length, page.hasMore);
  room.read(ack.seq);
  room.delivered(ack.seq);
  room.typing(true);
  const n: number = room.unread;
  const rooms: RoomState[] = client.rooms;
  console.log(n, rooms);
  try {
    await room.leave({ keepMembership: true });
  } catch (e) {
    if (e instanceof ChorusError) console.log(e.code, e.retryable, e.retryAfterMs);
  }
  client.close();
  void localStorageAdapter;
}
