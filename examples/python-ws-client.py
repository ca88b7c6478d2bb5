"""Subscribe to pgtide over /ws and resume after disconnects with from_seq.

Usage: python3 python-ws-client.py ws://127.0.0.1:8080 <token> [pattern]
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, token: str, pattern: str) -> None:
    last_seq = None
    while True:
        try:
            async with websockets.connect(f"{url}/ws?token={token}") as ws:
                request = {"type": "subscribe", "topic": pattern, "id": 1}
                if last_seq is not None:
                    request["from_seq"] = last_seq  # no gap, no duplicate
                await ws.send(json.dumps(request))
                async for raw in ws:
                    message = json.loads(raw)
                    if "status" in message:
                        if message["status"] != "success":
                            raise SystemExit(f"refused: {message['error']}")
                        continue
                    if message["topic"] == "meta.ws":
                        print(f"server dropped {message['data']['count']} events: read faster")
                        continue
                    last_seq = message["seq"]
                    print(message["seq"], message["topic"], json.dumps(message["data"]))
        except (OSError, websockets.ConnectionClosed) as e:
            print(f"disconnected ({e}); reconnecting from seq {last_seq}")
            await asyncio.sleep(1)


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080"
    tok = sys.argv[2] if len(sys.argv) > 2 else ""
    pat = sys.argv[3] if len(sys.argv) > 3 else "**"
    asyncio.run(main(base, tok, pat))
