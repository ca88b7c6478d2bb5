// Verifies one webhook delivery with the Standard Webhooks reference library.
// Reads {"secret", "headers", "body"} as JSON on stdin; prints one JSON line
// {"ok": true, "payload": ...}; exits non-zero when verification fails or a
// tampered body is accepted.
import swh from "standardwebhooks";

const { Webhook } = swh;
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };

let text = "";
for await (const chunk of process.stdin) text += chunk;
const { secret, headers, body } = JSON.parse(text);

const wh = new Webhook(secret);
let payload;
try {
  payload = wh.verify(body, headers);
} catch (e) {
  fail(`verification failed: ${e.message}`);
}
try {
  wh.verify(body + " ", headers);
  fail("a tampered body was accepted");
} catch (e) {
  if (e.message.startsWith("FAIL")) throw e;
}
console.log(JSON.stringify({ ok: true, payload }));
