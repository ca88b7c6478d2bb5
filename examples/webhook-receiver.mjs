// A webhook endpoint that verifies pgtide's signature before trusting a delivery.
// Usage: WEBHOOK_SECRET=<the endpoint's secret> node webhook-receiver.mjs [port]
import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";

const secret = process.env.WEBHOOK_SECRET;
if (!secret) { console.error("set WEBHOOK_SECRET to the secret from POST /v1/webhooks"); process.exit(1); }
const port = Number(process.argv[2] || 9000);
const TOLERANCE_SECONDS = 300;

function verify(header, body) {
  // X-Pgtide-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
  const parts = Object.fromEntries((header || "").split(",").map((kv) => kv.split("=", 2)));
  const t = Number(parts.t);
  if (!t || Math.abs(Date.now() / 1000 - t) > TOLERANCE_SECONDS) return false;
  const expected = createHmac("sha256", secret).update(`${parts.t}.${body}`).digest();
  const given = Buffer.from(parts.v1 || "", "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

createServer((req, res) => {
  let body = "";
  req.on("data", (c) => { body += c; });
  req.on("end", () => {
    if (!verify(req.headers["x-pgtide-signature"], body)) {
      res.writeHead(401).end("bad signature");
      return;
    }
    const events = [].concat(JSON.parse(body)); // a batch endpoint posts an array
    for (const e of events) console.log(req.headers["x-pgtide-delivery-id"], e.seq, e.topic, JSON.stringify(e.data));
    res.writeHead(200).end("ok"); // any non-2xx is retried with backoff
  });
}).listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}/`));
