"""An aiohttp client (one ClientSession, keep-alive) driven by JSON commands on stdin, one per
line: {"op": "request", "method", "url", "headers": {...}, "body": text|null, "pad": N|null}
("pad": N sends the JSON document {"pad": "xxx..."} of exactly N bytes), or
{"op": "websocket", "url", "text": [...], "binary": [hex, ...]}: one WebSocket connection that
sends each message and reads its reply, then closes (RESULT {"replies": [text or hex, ...],
"local_port"}).
Prints "RESULT <json>" for each (status, response headers as received with repeated ones joined
by ", ", decoded body, the request headers aiohttp sent, the request body, the connection's
local port); "READY" first, "DONE" at end of input.
"""
import asyncio
import json
import sys

import aiohttp


def joined(headers):
    out = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = out[key] + ", " + value if key in out else value
    return out


def pad_document(size):
    head, tail = '{"pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


async def one(session, cmd):
    body = cmd.get("body")
    if cmd.get("pad"):
        body = pad_document(cmd["pad"])
    async with session.request(
        cmd.get("method", "GET"),
        cmd["url"],
        headers=cmd.get("headers") or {},
        data=body.encode() if body is not None else None,
    ) as resp:
        content = await resp.read()
        # The connection is back in the pool once the body is read; its protocol stays known.
        local_port = resp._protocol.transport.get_extra_info("sockname")[1]
        return {
            "status": resp.status,
            "headers": joined(resp.headers),
            "body": content.decode("utf-8", "replace"),
            "request_headers": joined(resp.request_info.headers),
            "request_body": body,
            "local_port": local_port,
        }


async def websocket(session, cmd):
    replies = []
    async with session.ws_connect(cmd["url"]) as ws:
        local_port = ws._response.connection.transport.get_extra_info("sockname")[1]
        for text in cmd.get("text", []):
            await ws.send_str(text)
            replies.append((await ws.receive()).data)
        for data in cmd.get("binary", []):
            await ws.send_bytes(bytes.fromhex(data))
            replies.append((await ws.receive()).data.hex())
    return {"replies": replies, "local_port": local_port}


async def main():
    loop = asyncio.get_running_loop()
    # trust_env: HTTPS_PROXY and friends are honoured, as requests does by default.
    async with aiohttp.ClientSession(trust_env=True) as session:
        print("READY", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            if cmd.get("op") == "websocket":
                result = await websocket(session, cmd)
            else:
                result = await one(session, cmd)
            print("RESULT " + json.dumps(result), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
