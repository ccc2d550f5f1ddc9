"""Servers that make one outbound call for each request they serve, for the parenting tests.

`parenting_app:app` is a Flask (WSGI) app, run under gunicorn (sync or gthread workers).
`python parenting_app.py aiohttp` serves the same route from an aiohttp (asyncio) server and
`python parenting_app.py downstream` is the server the calls go to (a ThreadingHTTPServer);
both listen on an OS-chosen loopback port and print "READY <port>".

GET /call?id=X[&wait_ms=N] -> waits N ms, then calls GET $DOWNSTREAM/hello?id=X (a new
                              connection per call) and answers 200 application/json
                              {"id": X, "downstream": <its status>}
GET /hello?id=X            -> (downstream) 200 application/json {"hello": X}
"""
import asyncio
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DOWNSTREAM = os.environ.get("DOWNSTREAM", "")


def flask_app():
    import requests
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.get("/call")
    def call():
        ident = request.args["id"]
        time.sleep(int(request.args.get("wait_ms", "0")) / 1000)
        status = requests.get(f"{DOWNSTREAM}/hello", params={"id": ident}).status_code
        return Response(json.dumps({"id": ident, "downstream": status}), mimetype="application/json")

    return app


app = flask_app()


async def serve_aiohttp():
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def call(request):
        ident = request.query["id"]
        await asyncio.sleep(int(request.query.get("wait_ms", "0")) / 1000)
        async with session.get(f"{DOWNSTREAM}/hello", params={"id": ident}) as resp:
            await resp.read()
            status = resp.status
        return web.Response(text=json.dumps({"id": ident, "downstream": status}), content_type="application/json")

    web_app = web.Application()
    web_app.router.add_get("/call", call)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY {site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


class Downstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        ident = parse_qs(urlsplit(self.path).query).get("id", [""])[0]
        body = json.dumps({"hello": ident}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "aiohttp":
        asyncio.run(serve_aiohttp())
    elif mode == "downstream":
        server = ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
        print(f"READY {server.server_address[1]}", flush=True)
        server.serve_forever()
    else:
        raise SystemExit("usage: parenting_app.py aiohttp|downstream")


if __name__ == "__main__":
    main()
