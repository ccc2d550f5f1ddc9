"""Raw socket servers for the capture tests; each prints "READY <port>" and serves until killed.

Modes (argv[1]):
  upload   read one request with a Content-Length body, answer {"received": N}
  writev   answer GET with os.writev([head, body])
  sendmsg  answer GET with socket.sendmsg([head, body])
  sendfile answer GET with the head by send() and the body (argv[2], a file) by socket.sendfile
  binary   read 16 bytes, answer 16 binary bytes (a non-HTTP protocol)
"""
import json
import os
import socket
import sys

BODY = b'{"served": "by capture_servers.py", "padding": "' + b"x" * 300 + b'"}'


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def response_head(length, content_type=b"application/json"):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(length).encode() + b"\r\nConnection: close\r\n\r\n")


def serve(mode, conn, extra):
    if mode == "binary":
        data = b""
        while len(data) < 16:
            chunk = conn.recv(16 - len(data))
            if not chunk:
                return
            data += chunk
        conn.sendall(bytes(range(200, 216)))
        return
    head, rest = read_head(conn)
    if head is None:
        return
    if mode == "upload":
        remaining = content_length(head) - len(rest)
        received = len(rest)
        while remaining > 0:
            chunk = conn.recv(min(remaining, 1 << 20))
            if not chunk:
                break
            received += len(chunk)
            remaining -= len(chunk)
        body = json.dumps({"received": received}).encode()
        conn.sendall(response_head(len(body)) + body)
    elif mode == "writev":
        os.writev(conn.fileno(), [response_head(len(BODY)), BODY])
    elif mode == "sendmsg":
        conn.sendmsg([response_head(len(BODY)), BODY])
    elif mode == "sendfile":
        size = os.path.getsize(extra)
        conn.sendall(response_head(size, b"application/octet-stream"))
        with open(extra, "rb") as f:
            conn.sendfile(f)


def main():
    mode = sys.argv[1]
    extra = sys.argv[2] if len(sys.argv) > 2 else None
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(f"READY {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            serve(mode, conn, extra)


if __name__ == "__main__":
    main()
