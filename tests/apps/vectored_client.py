"""A raw-socket client that uses vectored I/O, as asyncio's writelines does on Python >= 3.12:
argv: <port>. Prints "READY", waits for a line on stdin, then on one keep-alive connection
1. POST /upload: head and a 1 MiB JSON body in one sendmsg([head, body]) (then the rest, if
   the kernel took only part of it);
2. GET /big?size=307200, the response read with recvmsg_into([256-byte buffer, 512 KiB buffer]);
and prints "RESULT <json>": for each, the request as sent (method, target, headers, body) and
the response as received (status, headers, body), and the local port.
"""
import json
import socket
import sys


def pad_document(size):
    head, tail = '{"pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


class Reader:
    """Reads a stream with recvmsg_into over two buffers, keeping what is not consumed yet."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        small, large = bytearray(256), bytearray(512 * 1024)
        n, _, _, _ = self.sock.recvmsg_into([small, large])
        if n == 0:
            raise SystemExit("connection closed early")
        data = bytes(small[: min(n, 256)]) + bytes(large[: max(0, n - 256)])
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def read_response(reader):
    _, status, _ = reader.line().split(" ", 2)
    headers = {}
    while True:
        line = reader.line()
        if not line:
            break
        name, value = line.split(":", 1)
        name, value = name.strip().lower(), value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    body = reader.exactly(int(headers["content-length"]))
    return {"status": int(status), "headers": headers, "body": body.decode()}


def main():
    port = int(sys.argv[1])
    host = f"127.0.0.1:{port}"
    body = pad_document(1 << 20)
    upload_headers = {
        "Host": host,
        "User-Agent": "vectored/1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    big_headers = {"Host": host, "User-Agent": "vectored/1"}
    print("READY", flush=True)
    sys.stdin.readline()
    sock = socket.create_connection(("127.0.0.1", port))
    head = "POST /upload HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in upload_headers.items()) + "\r\n"
    data = [head.encode(), body.encode()]
    sent = sock.sendmsg(data)
    rest = b"".join(data)[sent:]
    if rest:
        sock.sendall(rest)
    reader = Reader(sock)
    upload = read_response(reader)
    big_head = "GET /big?size=307200 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in big_headers.items()) + "\r\n"
    sock.sendall(big_head.encode())
    big = read_response(reader)
    local_port = sock.getsockname()[1]
    sock.close()
    print("RESULT " + json.dumps({
        "requests": [
            {"method": "POST", "target": "/upload", "headers": {k.lower(): v for k, v in upload_headers.items()}, "body": body},
            {"method": "GET", "target": "/big?size=307200", "headers": {k.lower(): v for k, v in big_headers.items()}, "body": ""},
        ],
        "responses": [upload, big],
        "first_sendmsg_bytes": sent,
        "local_port": local_port,
    }), flush=True)


if __name__ == "__main__":
    main()
