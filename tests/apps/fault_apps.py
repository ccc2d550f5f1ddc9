"""Small servers and clients for the fault tests (tests/tests/faults.rs), on raw sockets so that
every byte on the wire is the test's choice.

fault_apps.py server
    A thread-per-connection HTTP/1.1 keep-alive server with no limit on head size (a 1 MB header
    line is read whole). Prints "READY <port>".
    GET  /hello?...  -> 200 application/json {"target": "<target>", "head_bytes": <head size>}
    POST /echo       -> 200, the request body echoed with the request's content type
    GET  /die        -> a 200 head announcing 1000 body bytes, 100 of them, then the process
                        exits at once (a server dying mid-response)
    A peer that goes away mid-request is dropped quietly.
fault_apps.py half_request <port>
    Sends a POST head announcing 1000 body bytes and 100 of them, prints "SENT", then waits
    (to be killed).
fault_apps.py client
    JSON commands on stdin, one per line; prints "READY" first, "RESULT <json>" per command.
    {"op": "load", "port", "threads", "seconds" | "count", "body": N, "pause_ms": P, "tag": T}
        Closed loop over `threads` keep-alive connections, for `seconds` or `count` requests per
        thread, sleeping P ms between requests: GET /load?tag=T&t=<t>&i=<i>, or with body N > 0
        POST /echo?tag=T&t=<t>&i=<i> with a JSON body of N bytes (the echo is checked). RESULT:
        requests, errors (first messages too), latency p50/p99/max in ms. With "stop_file": F,
        the loop also ends as soon as file F exists.
    {"op": "until_eof", "port", "path"}
        GET <path> on a new connection, reads until the server closes. RESULT: the status line
        and the number of bytes received.
"""
import json
import os
import socket
import sys
import threading
import time

import line_protocol


def read_head(sock, buf):
    """Reads until the end of a head; returns (head, rest) or None at EOF."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buf[:end + 4]), bytes(buf[end + 4:])
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


def read_exactly(sock, rest, length):
    """Body of `length` bytes starting with `rest`; None at EOF. Returns (body, leftover)."""
    data = bytearray(rest)
    while len(data) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return bytes(data[:length]), bytes(data[length:])


def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def respond(sock, status, content_type, body):
    sock.sendall(b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                 % (status, content_type, len(body)) + body)


def serve_connection(sock):
    buf = b""
    try:
        while True:
            got = read_head(sock, bytearray(buf))
            if got is None:
                return
            head, rest = got
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            method, target = parts[0], parts[1] if len(parts) > 1 else b"/"
            length = int(header(head, b"content-length") or 0)
            got = read_exactly(sock, rest, length)
            if got is None:
                return
            body, buf = got
            path = target.split(b"?", 1)[0]
            if path == b"/die":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n" + b"x" * 100)
                os._exit(0)
            elif method == b"POST" and path == b"/echo":
                respond(sock, 200, header(head, b"content-type") or b"application/octet-stream", body)
            else:
                answer = {"target": target.decode("latin-1"), "head_bytes": len(head)}
                respond(sock, 200, b"application/json", json.dumps(answer).encode())
            if (header(head, b"connection") or b"").lower() == b"close":
                return
    except OSError:
        return
    finally:
        sock.close()


def server():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    print(f"READY {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


def half_request(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /echo?half=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n" + b"{" + b"x" * 99)
    print("SENT", flush=True)
    time.sleep(3600)


def load_worker(cmd, t, deadline, out):
    count = cmd.get("count")
    pause = cmd.get("pause_ms", 0) / 1000
    tag = cmd.get("tag", "load").encode()
    stop_file = cmd.get("stop_file")
    body = b""
    if cmd.get("body"):
        body = b'{"pad": "' + b"x" * max(0, cmd["body"] - 11) + b'"}'
    latencies, errors, messages = [], 0, []
    sock, buf, i = None, b"", 0
    while (i < count) if count is not None else (time.monotonic() < deadline):
        if stop_file and os.path.exists(stop_file):
            break
        if pause and i:
            time.sleep(pause)
        started = time.perf_counter()
        try:
            if sock is None:
                sock, buf = socket.create_connection(("127.0.0.1", cmd["port"])), b""
            if body:
                sock.sendall(b"POST /echo?tag=%s&t=%d&i=%d HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n"
                             % (tag, t, i, len(body)) + body)
            else:
                sock.sendall(b"GET /load?tag=%s&t=%d&i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (tag, t, i))
            got = read_head(sock, bytearray(buf))
            if got is None:
                raise OSError("connection closed by the server")
            head, rest = got
            got = read_exactly(sock, rest, int(header(head, b"content-length") or 0))
            if got is None:
                raise OSError("connection closed mid-body")
            answer, buf = got
            if not head.startswith(b"HTTP/1.1 200") or (body and answer != body):
                raise OSError(f"unexpected answer {head[:40]!r}")
        except OSError as error:
            errors += 1
            if count is not None:
                i += 1
            if len(messages) < 5:
                messages.append(str(error))
            if sock is not None:
                sock.close()
            sock = None
            continue
        latencies.append(time.perf_counter() - started)
        i += 1
    if sock is not None:
        sock.close()
    out[t] = (latencies, errors, messages)


def load(cmd):
    deadline = time.monotonic() + cmd.get("seconds", 0)
    out = [None] * cmd["threads"]
    pool = [threading.Thread(target=load_worker, args=(cmd, t, deadline, out))
            for t in range(cmd["threads"])]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    latencies = sorted(x for lat, _, _ in out for x in lat)
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3) if latencies else 0
    return {
        "requests": len(latencies),
        "errors": sum(e for _, e, _ in out),
        "error_messages": [m for _, _, ms in out for m in ms],
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0,
    }


def until_eof(cmd):
    sock = socket.create_connection(("127.0.0.1", cmd["port"]))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % cmd["path"].encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return {"status_line": data.split(b"\r\n", 1)[0].decode("latin-1"), "received": len(data)}


def client():
    line_protocol.serve({"load": load, "until_eof": until_eof})


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server()
    elif mode == "half_request":
        half_request(int(sys.argv[2]))
    elif mode == "client":
        client()
    else:
        raise SystemExit(f"unknown mode {mode}")
