// Drives pgtide's /ws endpoint with the Node `ws` client: the seed's pattern
// table, the request/reply protocol, replay then live.
// Usage: node ws-check.mjs <base-url> [token]
// Prints one JSON line of findings; exits non-zero on any failure.
import WebSocket from "ws";

const [base, token] = process.argv.slice(2);
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };
setTimeout(() => fail("timed out"), 20000).unref();
const wsUrl = base.replace(/^http/, "ws") + "/ws" + (token ? `?token=${encodeURIComponent(token)}` : "");

// A connection that hands out replies by id and events in arrival order.
const open = () => new Promise((resolve, reject) => {
  const ws = new WebSocket(wsUrl);
  const replies = new Map();
  const events = [];
  let wake = null;
  ws.on("message", (raw) => {
    const m = JSON.parse(raw.toString());
    if ("status" in m) { replies.get(m.id)?.(m); replies.delete(m.id); return; }
    events.push(m);
    wake?.();
  });
  ws.on("error", reject);
  ws.on("open", () => resolve({
    request: (msg) => new Promise((res) => { replies.set(msg.id, res); ws.send(JSON.stringify(msg)); }),
    raw: (text, id) => new Promise((res) => { replies.set(id, res); ws.send(text); }),
    next: async () => {
      while (events.length === 0) await new Promise((r) => { wake = r; });
      wake = null;
      return events.shift();
    },
    close: () => ws.close(),
  }));
});

const publish = async (topic, data) => {
  const r = await fetch(`${base}/v1/events`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ event_type: "custom.test", topic, data }),
  });
  if (r.status !== 200) fail(`publish ${topic}: ${r.status} ${await r.text()}`);
  return (await r.json()).seq;
};

const result = {};
// The seed's pattern table: each subscriber gets exactly its topics.
const patterns = ["jobs/abc-123", "jobs/*", "jobs/**", "tables/users/**", "**"];
const clients = [];
for (const [i, topic] of patterns.entries()) {
  const c = await open();
  const verb = i % 2 ? "action" : "type";
  const r = await c.request({ [verb]: "subscribe", topic, id: i });
  if (r.status !== "success" || r.data.topic !== topic.replaceAll("/", ".")) fail(`subscribe ${topic}: ${JSON.stringify(r)}`);
  await c.request({ type: "subscribe", topic: "end", id: "end" });
  clients.push(c);
}
const topics = ["jobs/abc-123", "jobs/xyz", "jobs/abc-123/done", "tables/users/insert", "tables/orders/insert", "other"];
for (const t of topics) await publish(t, { t });
await publish("end", {});
const dotted = topics.map((t) => t.replaceAll("/", "."));
const expected = [
  ["jobs.abc-123"],
  ["jobs.abc-123", "jobs.xyz"],
  ["jobs.abc-123", "jobs.xyz", "jobs.abc-123.done"],
  ["tables.users.insert"],
  dotted,
];
for (const [i, c] of clients.entries()) {
  const got = [];
  for (;;) {
    const e = await c.next();
    if (e.topic === "end") break;
    if (e.data.t.replaceAll("/", ".") !== e.topic) fail(`payload mismatch ${JSON.stringify(e)}`);
    got.push(e.topic);
  }
  if (JSON.stringify(got) !== JSON.stringify(expected[i])) fail(`${patterns[i]} got ${JSON.stringify(got)}, want ${JSON.stringify(expected[i])}`);
  c.close();
}
result.patterns = patterns.length;

// Protocol: ping, malformed and unknown frames get error replies, the connection stays.
const c = await open();
const pong = await c.request({ type: "ping", id: "p" });
if (pong.id !== "p" || pong.status !== "success" || pong.data?.pong !== true || pong.error !== null) fail(`ping: ${JSON.stringify(pong)}`);
const bad = await c.raw("{not json", null);
if (bad.status !== "error" || bad.error.code !== "invalid_message") fail(`malformed: ${JSON.stringify(bad)}`);
const unknown = await c.request({ type: "dance", id: 7 });
if (unknown.error?.code !== "unknown_type") fail(`unknown: ${JSON.stringify(unknown)}`);
const badTopic = await c.request({ type: "subscribe", topic: "a..b", id: 8 });
if (badTopic.error?.code !== "invalid_topic") fail(`bad topic: ${JSON.stringify(badTopic)}`);

// Replay from a seq, then live, in order with no duplicate.
const first = await publish("feed/x", { n: 1 });
await publish("feed/x", { n: 2 });
const sub = await c.request({ type: "subscribe", topic: "feed/*", from_seq: first - 1, id: 9 });
if (sub.status !== "success") fail(`replay subscribe: ${JSON.stringify(sub)}`);
const live = await publish("feed/x", { n: 3 });
const seen = [];
while (seen.length < 3) seen.push(await c.next());
const ns = seen.map((e) => e.data.n);
if (JSON.stringify(ns) !== "[1,2,3]") fail(`replay then live: ${JSON.stringify(ns)}`);
if (seen[2].seq !== live) fail(`live seq ${seen[2].seq} != ${live}`);
// Publish over the socket itself.
const pub = await c.request({ type: "publish", topic: "feed/y", data: { n: 4 }, id: 10 });
if (pub.status !== "success") fail(`ws publish: ${JSON.stringify(pub)}`);
const own = await c.next();
if (own.topic !== "feed.y" || own.source !== "ws" || own.seq !== pub.data.seq) fail(`own publish: ${JSON.stringify(own)}`);
c.close();
result.replayed = 2;
result.ok = true;
console.log(JSON.stringify(result));
process.exit(0);
