// Socket.IO client: subscribe (replaying from seq 0), publish one event, print what arrives.
// Usage: node node-socketio-client.mjs http://127.0.0.1:8080 <token>
import { io } from "socket.io-client";

const [base = "http://127.0.0.1:8080", token] = process.argv.slice(2);
const socket = io(base, { auth: { token } });

socket.on("connect", async () => {
  const sub = await socket.emitWithAck("subscribe", { topic: "chat.**", from_seq: 0 });
  console.log("subscribe:", sub);
  const pub = await socket.emitWithAck("publish", { topic: "chat.general", event_type: "chat.message", data: { text: "hello" } });
  console.log("publish:", pub);
});
socket.on("event", (e) => console.log(e.seq, e.topic, e.type, JSON.stringify(e.data)));
socket.on("connect_error", (e) => { console.error("cannot connect:", e.message); process.exit(1); });
