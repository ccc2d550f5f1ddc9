"""An httpx client (one keep-alive httpx.Client, or with HTTPX_ASYNC=1 one httpx.AsyncClient on
an asyncio loop) driven by JSON commands on stdin, one per line:
{"op": "request", "method", "url", "headers": {...}, "body": text|null, "pad": N|null}
("pad": N sends the JSON document {"pad": "xxx..."} of exactly N bytes).
Prints "RESULT <json>" for each (status, response headers as received, decoded body, the
request headers httpx sent, the request body, the connection's local port); "READY" first,
"DONE" at end of input. HTTPS trusts SSL_CERT_FILE.
"""
import asyncio
import json
import os
import sys

import httpx


def pad_document(size):
    head, tail = '{"pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


def commands():
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


def request_args(cmd):
    body = cmd.get("body")
    if cmd.get("pad"):
        body = pad_document(cmd["pad"])
    args = {
        "method": cmd.get("method", "GET"),
        "url": cmd["url"],
        "headers": cmd.get("headers") or {},
        "content": body.encode() if body is not None else None,
    }
    return args, body


def report(resp, body):
    local_port = resp.extensions["network_stream"].get_extra_info("client_addr")[1]
    print("RESULT " + json.dumps({
        "status": resp.status_code,
        "headers": dict(resp.headers.items()),
        "body": resp.text,
        "request_headers": dict(resp.request.headers.items()),
        "request_body": body,
        "local_port": local_port,
    }), flush=True)


def run_sync():
    client = httpx.Client(timeout=30)
    print("READY", flush=True)
    for cmd in commands():
        args, body = request_args(cmd)
        report(client.request(**args), body)
    client.close()


async def run_async():
    async with httpx.AsyncClient(timeout=30) as client:
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        lines = commands()
        while True:
            cmd = await loop.run_in_executor(None, next, lines, None)
            if cmd is None:
                break
            args, body = request_args(cmd)
            report(await client.request(**args), body)


def main():
    if os.environ.get("HTTPX_ASYNC") == "1":
        asyncio.run(run_async())
    else:
        run_sync()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
