"""Closed-loop load over keep-alive connections: argv <port> <seconds> <connections> [body_bytes].
Each connection (a thread) sends GET /load?i=N (or POST with a JSON body) and reads the response;
prints "DONE <requests> <errors>"."""
import socket
import sys
import threading
import time


def worker(port, deadline, body, counts, index):
    sock = socket.create_connection(("127.0.0.1", port))
    buf = b""
    n = 0
    errors = 0
    while time.monotonic() < deadline:
        if body:
            req = (b"POST /load?i=%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % (n, len(body))) + body
        else:
            req = b"GET /load?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n
        sock.sendall(req)
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                errors += 1
                counts[index] = (n, errors)
                return
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += sock.recv(65536)
        buf = rest[length:]
        n += 1
    counts[index] = (n, errors)


def main():
    port, seconds, conns = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    body = b'{"data": "' + b"x" * max(0, int(sys.argv[4]) - 12) + b'"}' if len(sys.argv) > 4 else b""
    deadline = time.monotonic() + seconds
    counts = [(0, 0)] * conns
    threads = [threading.Thread(target=worker, args=(port, deadline, body, counts, i)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"DONE {sum(c[0] for c in counts)} {sum(c[1] for c in counts)}", flush=True)


if __name__ == "__main__":
    main()
