#!/usr/bin/env node
// Benchmark peer: a Socket.IO server with the same events and semantics as
// ../socketioxide (the Rust peer).
//
//   node server.js --port P [--host 127.0.0.1] [--redis redis://127.0.0.1:6379]
//
// Prints exactly one line `listening on HOST:PORT` on stdout once ready
// (`--port 0` picks a free port). With --redis, @socket.io/redis-adapter (pub +
// sub clients of the `redis` package) carries broadcasts between instances;
// without it the default in-memory adapter is used.
//
// Events (namespace "/"):
//   join  (room: string, ack)           -> socket.join(room), ack "ok"
//   leave (room: string, ack)           -> socket.leave(room), ack "ok"
//   send  ({room, data}, optional ack)  -> io.to(room).emit("msg", data), ack "ok"
//                                          (the sender gets its own msg: it is in the room)
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function usage(msg) {
  if (msg) process.stderr.write(`${msg}\n`);
  process.stderr.write("usage: node server.js --port P [--host H] [--redis redis://HOST:PORT]\n");
  process.exit(2);
}

function parseArgs(argv) {
  const args = { host: "127.0.0.1", port: 0, redis: null };
  for (let i = 0; i < argv.length; i++) {
    let key = argv[i];
    let val;
    const eq = key.indexOf("=");
    if (eq > 0) {
      val = key.slice(eq + 1);
      key = key.slice(0, eq);
    }
    const next = () => {
      if (val !== undefined) return val;
      if (i + 1 >= argv.length) usage(`missing value for ${key}`);
      return argv[++i];
    };
    switch (key) {
      case "--port": {
        const p = Number(next());
        if (!Number.isInteger(p) || p < 0 || p > 65535) usage("bad --port");
        args.port = p;
        break;
      }
      case "--host":
        args.host = next();
        break;
      case "--redis":
        args.redis = next() || null;
        break;
      case "-h":
      case "--help":
        usage();
        break;
      default:
        usage(`unknown argument: ${key}`);
    }
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const httpServer = http.createServer();

  const io = new Server(httpServer, {
    path: "/socket.io/",
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    httpCompression: false,
    maxHttpBufferSize: 1e6,
    pingInterval: 25000,
    pingTimeout: 20000,
  });

  const redisClients = [];
  if (args.redis) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pubClient = createClient({ url: args.redis });
    const subClient = pubClient.duplicate();
    for (const c of [pubClient, subClient]) {
      c.on("error", (err) => process.stderr.write(`redis error: ${err && err.message}\n`));
    }
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
    redisClients.push(pubClient, subClient);
  }

  io.on("connection", (socket) => {
    // Read the token like a real app would (auth.token or ?token=); no verification.
    const auth = socket.handshake.auth || {};
    socket.data.token = auth.token || socket.handshake.query.token || null;

    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack("ok");
    });

    socket.on("leave", (room, ack) => {
      socket.leave(String(room));
      if (typeof ack === "function") ack("ok");
    });

    socket.on("send", (payload, ack) => {
      const room = payload && payload.room;
      if (typeof room !== "string") {
        if (typeof ack === "function") ack("error: room must be a string");
        return;
      }
      io.to(room).emit("msg", payload.data);
      if (typeof ack === "function") ack("ok");
    });
  });

  httpServer.listen(args.port, args.host, () => {
    const addr = httpServer.address();
    process.stdout.write(`listening on ${args.host}:${addr.port}\n`);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    io.close(() => {
      Promise.allSettled(redisClients.map((c) => (typeof c.close === "function" ? c.close() : c.quit()))).then(() => process.exit(0));
    });
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((err) => {
  process.stderr.write(`fatal: ${(err && err.stack) || err}\n`);
  process.exit(1);
});
