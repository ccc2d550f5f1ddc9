"""An aiohttp server for the end-to-end tests, on an OS-chosen loopback port; prints
"READY <port>" once listening.

GET  /items/{id}?...  -> 200 application/json {"id": id, "query": {...}}, X-Item-Id: <id>
POST /echo            -> 201, the request body back with the request's content type
POST /upload          -> 200 application/json {"received": <body length>}
GET  /big?size=N      -> 200 application/json, a JSON document of exactly N bytes
GET  /fetch?url=U     -> 200 application/json: the handler GETs U with an aiohttp ClientSession
                         (HTTPS trusts SSL_CERT_FILE) and reports {"status", "headers",
                         "body", "request_headers", "local_port"} of that outbound call
GET  /ws              -> WebSocket upgrade (101); each text message comes back prefixed with
                         "echo:", each binary message as it is
"""
import asyncio
import json

import aiohttp
from aiohttp import web


async def item(request):
    item_id = int(request.match_info["id"])
    body = json.dumps({"id": item_id, "query": dict(request.query)})
    return web.Response(text=body, content_type="application/json", headers={"X-Item-Id": str(item_id)})


async def echo(request):
    body = await request.read()
    return web.Response(body=body, status=201, headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")})


async def upload(request):
    body = await request.read()
    return web.Response(text=json.dumps({"received": len(body)}), content_type="application/json")


def document_of_size(size):
    """A JSON document of exactly `size` bytes (size >= 16)."""
    head = '{"fill": "'
    tail = '"}'
    fill = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(size - len(head) - len(tail)))
    return head + fill + tail


async def big(request):
    return web.Response(text=document_of_size(int(request.query["size"])), content_type="application/json")


def joined(headers):
    out = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = out[key] + ", " + value if key in out else value
    return out


async def fetch(request):
    async with aiohttp.ClientSession() as session:
        async with session.get(request.query["url"]) as resp:
            content = await resp.read()
            local_port = resp._protocol.transport.get_extra_info("sockname")[1]
            report = {
                "status": resp.status,
                "headers": joined(resp.headers),
                "body": content.decode("utf-8", "replace"),
                "request_headers": joined(resp.request_info.headers),
                "request_body": None,
                "local_port": local_port,
            }
    return web.Response(text=json.dumps(report), content_type="application/json")


async def websocket(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def main():
    app = web.Application()
    app.router.add_get("/items/{id}", item)
    app.router.add_post("/echo", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/big", big)
    app.router.add_get("/fetch", fetch)
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
