// The reference server of `pgtide bench fanout`: a plain Node.js Socket.IO v4
// server with one room per subscribed topic pattern. It speaks the part of
// pgtide's Socket.IO protocol (SPEC §8) the benchmark uses:
//   subscribe {topic}            -> joins the room `topic`, acks {status, data}
//   publish {topic, event_type?, data} -> emits `event` with an envelope shaped
//                                   like pgtide's to every room whose pattern
//                                   matches the topic, acks {status, data}
// It keeps nothing: no store, no replay, no auth. It prints
// `node socket.io listening on http://HOST:PORT` once it is ready.
//
// Usage: node server.mjs [port]   (0, the default, picks a free port)

import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 0);
const http = createServer();
const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

// Pattern text -> RegExp, for the rooms anyone joined (pgtide's rules: `*` is
// one segment, a final `**` one or more).
const rooms = new Map();

function compile(pattern) {
  const parts = pattern.split(".").map((segment, i, all) => {
    if (segment === "**" && i === all.length - 1) return "[^.]+(?:\\.[^.]+)*";
    if (segment === "*") return "[^.]+";
    return segment.replace(/[^A-Za-z0-9_-]/g, "\\$&");
  });
  return new RegExp(`^${parts.join("\\.")}$`);
}

let seq = 0;

io.on("connection", (socket) => {
  socket.on("subscribe", (request, ack) => {
    const topic = request?.topic;
    if (typeof topic !== "string" || topic === "") {
      ack?.({ status: "error", error: { code: "invalid_message", message: "missing \"topic\"" } });
      return;
    }
    if (!rooms.has(topic)) rooms.set(topic, compile(topic));
    socket.join(topic);
    ack?.({ status: "success", data: { action: "subscribed", topic } });
  });

  socket.on("publish", (request, ack) => {
    const topic = request?.topic;
    if (typeof topic !== "string" || topic === "") {
      ack?.({ status: "error", error: { code: "invalid_message", message: "missing \"topic\"" } });
      return;
    }
    seq += 1;
    const event = {
      id: randomUUID(),
      seq,
      topic,
      type: request.event_type ?? topic,
      ts: new Date().toISOString(),
      source: "socketio",
      data: request.data ?? null,
      org_id: null,
      correlation_id: null,
      attributes: {},
      meta: {},
    };
    const matching = [];
    for (const [room, re] of rooms) {
      if (re.test(topic)) matching.push(room);
    }
    if (matching.length > 0) io.to(matching).emit("event", event);
    ack?.({ status: "success", data: { event_id: event.id, topic, seq, timestamp: event.ts } });
  });
});

http.listen(port, "127.0.0.1", () => {
  const { address, port: bound } = http.address();
  console.log(`node socket.io listening on http://${address}:${bound}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
