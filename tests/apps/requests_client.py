"""A `requests` client driven by JSON commands on stdin, one per line; one Session (keep-alive)
for the whole run. Prints "READY" first and "DONE" at end of input.

{"op": "request", "method", "url", "headers": {...}, "body": text|null, "pad": N|null}
    One request ("pad": N sends the JSON document {"pad": "xxx..."} of exactly N bytes).
    Prints "RESULT <json>": status, reason, response headers (as received, repeated ones joined
    with ", "), body (decoded text, after content decoding), the request headers requests sent,
    the request body sent, and the connection's local port.
{"op": "parallel", "requests": [<request command>, ...]}
    The requests at once, each in its own thread with its own Session; prints one "RESULT"
    with the list of their results, in order.
{"op": "burst", "base", "n"}
    n sequential GET <base>/n/<i>?i=<i> on the session; prints "RESULT" with every status/body.
{"op": "timeout", "url", "seconds"}
    GET url on the session with that read timeout, expected to time out (requests then drops
    the connection); prints "RESULT" {"timed_out": true|false}.
{"op": "threads", "base", "threads", "per"}
    `threads` threads, each with its own Session, each making `per` requests
    GET <base>/id/<id>?id=<id> with header X-Request-Id: <id>; prints "RESULT" with every id,
    status, body and the connection's local port.
"""
import threading

import requests

import line_protocol


def pad_document(size):
    head, tail = '{"pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


def one(session, cmd):
    body = cmd.get("body")
    if cmd.get("pad"):
        body = pad_document(cmd["pad"])
    resp = session.request(
        cmd.get("method", "GET"),
        cmd["url"],
        headers=cmd.get("headers") or {},
        data=body.encode() if body is not None else None,
        stream=True,
    )
    local_port = resp.raw._fp.fp.raw._sock.getsockname()[1]
    content = resp.content
    return {
        "status": resp.status_code,
        "reason": resp.reason,
        "headers": dict(resp.headers.items()),
        "body": content.decode("utf-8", "replace"),
        "body_len": len(content),
        "request_headers": dict(resp.request.headers.items()),
        "request_body": body,
        "local_port": local_port,
    }


def parallel(cmd):
    results = [None] * len(cmd["requests"])

    def work(i, sub):
        with requests.Session() as s:
            results[i] = one(s, sub)

    pool = [threading.Thread(target=work, args=(i, sub)) for i, sub in enumerate(cmd["requests"])]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return results


def timeout(session, cmd):
    try:
        session.get(cmd["url"], timeout=cmd["seconds"])
    except requests.exceptions.Timeout:
        return {"timed_out": True}
    return {"timed_out": False}


def burst(session, cmd):
    out = []
    for i in range(cmd["n"]):
        resp = session.get(f"{cmd['base']}/n/{i}?i={i}")
        out.append({"i": i, "status": resp.status_code, "body": resp.text})
    return out


def threads(cmd):
    results = [None] * cmd["threads"]

    def work(t):
        mine = []
        with requests.Session() as s:
            for k in range(cmd["per"]):
                rid = f"t{t:02d}-r{k:03d}"
                resp = s.get(f"{cmd['base']}/id/{rid}?id={rid}", headers={"X-Request-Id": rid}, stream=True)
                port = resp.raw._fp.fp.raw._sock.getsockname()[1]
                mine.append({"id": rid, "status": resp.status_code, "body": resp.text, "local_port": port})
        results[t] = mine

    pool = [threading.Thread(target=work, args=(t,)) for t in range(cmd["threads"])]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return [r for mine in results for r in mine]


def main():
    session = requests.Session()
    line_protocol.serve(
        {
            "request": lambda cmd: one(session, cmd),
            "parallel": parallel,
            "burst": lambda cmd: burst(session, cmd),
            "timeout": lambda cmd: timeout(session, cmd),
            "threads": threads,
        },
        default_op="request",
    )


if __name__ == "__main__":
    main()
