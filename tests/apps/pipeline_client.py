"""Sends three requests in one write on one raw socket (HTTP/1.1 pipelining), then reads the
three responses. argv: <port>. Prints "READY", waits for a line on stdin, then prints
"RESULT <json>": the requests exactly as sent (method, target, headers, body) and the
responses exactly as received (status, headers, body), and the local port.
"""
import json
import socket
import sys


def read_response(f):
    status_line = f.readline().decode("latin-1")
    version, status, _ = status_line.split(" ", 2)
    headers = {}
    while True:
        line = f.readline().decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, value = line.split(":", 1)
        name = name.strip().lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    if "content-length" not in headers:
        raise SystemExit(f"response without Content-Length: {headers}")
    body = f.read(int(headers["content-length"]))
    return {"status": int(status), "headers": headers, "body": body.decode()}


def main():
    port = int(sys.argv[1])
    host = f"127.0.0.1:{port}"
    echo_body = json.dumps({"pipelined": 2, "text": "second request"})
    requests = [
        ("GET", "/items/1?q=first", {"Host": host, "User-Agent": "pipeline/1", "X-Seq": "1"}, ""),
        (
            "POST",
            "/echo",
            {
                "Host": host,
                "User-Agent": "pipeline/1",
                "X-Seq": "2",
                "Content-Type": "application/json",
                "Content-Length": str(len(echo_body)),
            },
            echo_body,
        ),
        ("GET", "/items/3?q=third", {"Host": host, "User-Agent": "pipeline/1", "X-Seq": "3"}, ""),
    ]
    wire = b""
    for method, target, headers, body in requests:
        wire += f"{method} {target} HTTP/1.1\r\n".encode()
        wire += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        wire += b"\r\n" + body.encode()
    print("READY", flush=True)
    sys.stdin.readline()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(wire)
    f = sock.makefile("rb")
    responses = [read_response(f) for _ in requests]
    local_port = sock.getsockname()[1]
    f.close()
    sock.close()
    print("RESULT " + json.dumps({
        "requests": [
            {"method": m, "target": t, "headers": {k.lower(): v for k, v in h.items()}, "body": b}
            for m, t, h, b in requests
        ],
        "responses": responses,
        "local_port": local_port,
    }), flush=True)


if __name__ == "__main__":
    main()
