// Publishes over each Socket.IO transport (websocket, polling) with the
// official socket.io-client: phase "fits" publishes 512 KiB, phase "big"
// 10 MB. Usage: node socketio-oversize.mjs <base-url> fits|big
// Prints one JSON line: per transport, what became of the publish
// ("acked:<status>", "disconnected:<reason>" or "no answer"); exits non-zero
// only when the script itself fails.
import { io } from "socket.io-client";

const [base, phase] = process.argv.slice(2);
const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };
setTimeout(() => fail("timed out"), 40000).unref();
const size = { fits: 512 * 1024, big: 10 * 1000 * 1000 }[phase];
if (!size) fail(`unknown phase ${phase}`);

const connect = (transport) => new Promise((resolve, reject) => {
  const s = io(base, { transports: [transport], reconnection: false, forceNew: true });
  s.on("connect", () => resolve(s));
  s.on("connect_error", (e) => reject(new Error(`connect_error (${transport}): ${e.message}`)));
});

// Resolves with what happened to one publish: its ack, or the disconnect.
const publish = (s, topic) => new Promise((resolve) => {
  const onDisconnect = (reason) => resolve(`disconnected:${reason}`);
  s.once("disconnect", onDisconnect);
  s.timeout(15000).emit("publish", { topic, event_type: "custom.big", data: { blob: "x".repeat(size) } },
    (err, ack) => {
      s.off("disconnect", onDisconnect);
      resolve(err ? "no answer" : `acked:${ack.status}`);
    });
});

const result = {};
try {
  for (const transport of ["websocket", "polling"]) {
    const s = await connect(transport);
    result[transport] = await publish(s, `${phase}.${transport}`);
    s.close();
  }
  console.log(JSON.stringify(result));
  process.exit(0);
} catch (err) {
  fail(err.message);
}
