"""An httpx client (one keep-alive httpx.Client) driven by JSON commands on stdin, one per line:
{"op": "request", "method", "url", "headers": {...}, "body": text|null, "pad": N|null}
("pad": N sends the JSON document {"pad": "xxx..."} of exactly N bytes).
Prints "RESULT <json>" for each (status, response headers as received, decoded body, the
request headers httpx sent, the request body, the connection's local port); "READY" first,
"DONE" at end of input.
"""
import json
import sys

import httpx


def pad_document(size):
    head, tail = '{"pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


def main():
    client = httpx.Client(timeout=30)
    print("READY", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        body = cmd.get("body")
        if cmd.get("pad"):
            body = pad_document(cmd["pad"])
        resp = client.request(
            cmd.get("method", "GET"),
            cmd["url"],
            headers=cmd.get("headers") or {},
            content=body.encode() if body is not None else None,
        )
        local_port = resp.extensions["network_stream"].get_extra_info("client_addr")[1]
        print("RESULT " + json.dumps({
            "status": resp.status_code,
            "headers": dict(resp.headers.items()),
            "body": resp.text,
            "request_headers": dict(resp.request.headers.items()),
            "request_body": body,
            "local_port": local_port,
        }), flush=True)
    client.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
