"""Server and load for the overload tests.

  overload_app.py server
      An asyncio HTTP/1.1 keep-alive server: reads each request's Content-Length body and
      answers 200 application/json {"received": <body length>}. Prints "READY <port>".

  overload_app.py load <port> <seconds> <connections> <body_bytes> <requests_per_second> <path>
      Paced closed-loop load over keep-alive connections (one thread each): POST <path>?i=N with
      a JSON body of exactly <body_bytes> bytes ({"data": "xxx..."}), at most
      <requests_per_second> in all. Every response must be a 200 echoing the body's length;
      anything else (or a closed connection) is an error. Prints "DONE <requests> <errors>".
"""
import asyncio
import json
import socket
import sys
import threading
import time


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            answer = json.dumps({"received": len(body)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(answer)).encode() + b"\r\n\r\n" + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def read_response(sock, buf):
    """One response from `sock`: (status, body, rest of buf); None when the peer closed."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return status, rest[:length], rest[length:]


def worker(port, deadline, body, interval, path, counts, index):
    sock = socket.create_connection(("127.0.0.1", port))
    buf = b""
    sent = 0
    errors = 0
    expected = json.dumps({"received": len(body)}).encode()
    start = time.monotonic()
    while time.monotonic() < deadline:
        req = (b"POST %s?i=%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % (path.encode(), sent, len(body))) + body
        sock.sendall(req)
        sent += 1
        got = read_response(sock, buf)
        if got is None:
            errors += 1
            break
        status, answer, buf = got
        if status != 200 or answer != expected:
            errors += 1
        pause = start + sent * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    sock.close()
    counts[index] = (sent, errors)


def load(port, seconds, conns, body_bytes, rate, path):
    body = b'{"data": "' + b"x" * max(0, body_bytes - 12) + b'"}'
    interval = conns / rate
    deadline = time.monotonic() + seconds
    counts = [(0, 0)] * conns
    threads = [threading.Thread(target=worker, args=(port, deadline, body, interval, path, counts, i))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"DONE {sum(c[0] for c in counts)} {sum(c[1] for c in counts)}", flush=True)


def main():
    if sys.argv[1] == "server":
        asyncio.run(serve())
    else:
        port, seconds, conns = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
        load(port, seconds, conns, int(sys.argv[5]), float(sys.argv[6]), sys.argv[7])


if __name__ == "__main__":
    main()
