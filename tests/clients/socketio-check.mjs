// Drives pgtide's Socket.IO endpoint with the official socket.io-client.
// Usage: node socketio-check.mjs <base-url> [token]
// Prints one JSON line of findings; exits non-zero on any failure.
import { io } from "socket.io-client";

const [base, token] = process.argv.slice(2);
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };
setTimeout(() => fail("timed out"), 20000).unref();

const connect = (opts = {}) => new Promise((resolve, reject) => {
  const s = io(base, { auth: token ? { token } : {}, reconnection: false, ...opts });
  s.on("connect", () => resolve(s));
  s.on("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
});
const nextEvent = (s, pred) => new Promise((resolve) => {
  const h = (e) => { if (pred(e)) { s.off("event", h); resolve(e); } };
  s.on("event", h);
});
// Key order does not matter in JSON objects.
const canon = (v) => Array.isArray(v) ? v.map(canon)
  : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])])) : v;
const eq = (a, b, what) => {
  if (JSON.stringify(canon(a)) !== JSON.stringify(canon(b))) fail(`${what}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
};

const result = {};
try {
  const ws = await connect({ transports: ["websocket"] });
  const polling = await connect({ transports: ["polling"] });

  const sub = await ws.emitWithAck("subscribe", { topic: "chat/*" });
  eq(sub, { status: "success", data: { action: "subscribed", topic: "chat.*" } }, "subscribe ack");
  const bad = await ws.emitWithAck("subscribe", { topic: "a..b" });
  eq([bad.status, bad.error.code], ["error", "invalid_topic"], "bad pattern");

  const arriving = nextEvent(ws, (e) => e.topic === "chat.general");
  const pub = await polling.emitWithAck("publish", { topic: "chat/general", event_type: "chat.message", data: { text: "hi", n: 42 } });
  eq(pub.status, "success", "publish ack");
  const e = await arriving;
  eq([e.type, e.data, e.source, e.seq], ["chat.message", { text: "hi", n: 42 }, "socketio", pub.data.seq], "event");
  for (const k of ["id", "seq", "topic", "type", "ts", "source", "data", "org_id", "correlation_id", "attributes", "meta"]) {
    if (!(k in e)) fail(`envelope lacks ${k}`);
  }
  result.published_seq = pub.data.seq;

  // Replay from 0, then live, on a third client.
  const late = await connect();
  const replayed = nextEvent(late, (x) => x.topic === "chat.general");
  const r = await late.emitWithAck("subscribe", { topic: "chat.**", from_seq: 0 });
  eq(r.status, "success", "replay subscribe");
  eq((await replayed).seq, pub.data.seq, "replayed event");

  const un = await ws.emitWithAck("unsubscribe", { topic: "chat.*" });
  eq(un.data.action, "unsubscribed", "unsubscribe");
  const notSub = await ws.emitWithAck("unsubscribe", { topic: "chat.*" });
  eq(notSub.error.code, "not_subscribed", "second unsubscribe");

  for (const s of [ws, polling, late]) s.close();
  result.ok = true;
  console.log(JSON.stringify(result));
  process.exit(0);
} catch (err) {
  fail(err.message);
}
