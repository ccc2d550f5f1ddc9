"""An aiohttp client (one ClientSession, keep-alive) driven by JSON commands on stdin, one per
line: {"op": "request", "method", "url", "headers": {...}, "body": text|null, "pad": N|null}
("pad": N sends the JSON document {"pad": "xxx..."} of exactly N bytes).
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


async def main():
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        print("READY", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            result = await one(session, json.loads(line))
            print("RESULT " + json.dumps(result), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
