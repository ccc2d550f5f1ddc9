"""A urllib client driven by JSON commands on stdin, one per line:
{"method": "GET", "url": "http://...", "headers": {...}, "body": "text or null"}
For each, prints "RESULT <json>" with status, body, response headers and the connection's
local port; prints "DONE" at end of input. Prints "READY" first.
"""
import urllib.request

import line_protocol


def request(cmd):
    data = cmd.get("body")
    req = urllib.request.Request(
        cmd["url"],
        data=data.encode() if data is not None else None,
        method=cmd.get("method", "GET"),
        headers=cmd.get("headers", {}),
    )
    with urllib.request.urlopen(req) as resp:
        local_port = resp.fp.raw._sock.getsockname()[1]
        body = resp.read()
        return {
            "status": resp.status,
            "body": body.decode("utf-8", "replace"),
            "headers": dict(resp.headers.items()),
            "local_port": local_port,
        }


if __name__ == "__main__":
    line_protocol.serve({"request": request}, default_op="request")
