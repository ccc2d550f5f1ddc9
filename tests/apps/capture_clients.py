"""Socket clients for the capture tests. Each prints "READY" and waits for a line on stdin
before acting, so the sensor can be started in between; then prints "RESULT <json>" lines.

Modes (argv[1], port argv[2]):
  upload <port> <size>   POST a <size>-byte JSON-ish body in one connection
  get <port>             one GET /x with Connection: close, reading the whole response
  keepalive <port>       GET /hello?first=1 at once; after the go line, GET /hello?second=1 on the
                         same connection
  binary <port>          send 16 binary bytes, read 16
  h2 <port>              send the HTTP/2 connection preface and a SETTINGS frame
  dup <port> <file>      requests through a socket, its dup, then close both with close_range and
                         read <file> through the reused descriptor number
"""
import http.client
import json
import os
import socket
import sys


def pattern(size):
    unit = b'{"k": "0123456789abcdefghijklmnopqrstuvwxyz"},'
    body = b"[" + unit * (size // len(unit) + 1)
    return body[:size]


def recv_all(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def http_request(sock_send, sock_recv, path):
    sock_send(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock_recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        body += sock_recv(65536)
    return head, body


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "keepalive":
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/hello?first=1")
        conn.getresponse().read()
        print("READY", flush=True)
        sys.stdin.readline()
        conn.request("GET", "/hello?second=1", headers={"X-Second": "yes"})
        resp = conn.getresponse()
        body = resp.read()
        print("RESULT " + json.dumps({"status": resp.status, "body": body.decode(),
                                      "local_port": conn.sock.getsockname()[1]}), flush=True)
        return
    print("READY", flush=True)
    sys.stdin.readline()
    if mode == "upload":
        size = int(sys.argv[3])
        body = pattern(size)
        sock = socket.create_connection(("127.0.0.1", port))
        head = (b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(size).encode() + b"\r\n\r\n")
        sock.sendall(head + body)
        response = recv_all(sock)
        print("RESULT " + json.dumps({"head_len": len(head), "response": response.decode(),
                                      "local_port": sock.getsockname()[1]}), flush=True)
    elif mode == "get":
        sock = socket.create_connection(("127.0.0.1", port))
        request = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request)
        response = recv_all(sock)
        print("RESULT " + json.dumps({"response_len": len(response),
                                      "response_head": response.split(b"\r\n\r\n")[0].decode(),
                                      "local_port": sock.getsockname()[1]}), flush=True)
    elif mode == "binary":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(bytes(range(16)))
        data = b""
        while len(data) < 16:
            data += sock.recv(16)
        print("RESULT " + json.dumps({"received": len(data)}), flush=True)
    elif mode == "h2":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        sock.settimeout(2)
        try:
            sock.recv(100)
        except OSError:
            pass
        print("RESULT " + json.dumps({"sent": True}), flush=True)
    elif mode == "dup":
        path = sys.argv[3]
        sock = socket.create_connection(("127.0.0.1", port))
        fd = sock.fileno()
        dup_fd = os.dup(fd)
        results = []
        head, body = http_request(sock.sendall, sock.recv, b"/hello?via=original")
        results.append(body.decode())
        head, body = http_request(lambda b: os.write(dup_fd, b), lambda n: os.read(dup_fd, n),
                                  b"/hello?via=dup")
        results.append(body.decode())
        sock.detach()
        os.close(fd)
        head, body = http_request(lambda b: os.write(dup_fd, b), lambda n: os.read(dup_fd, n),
                                  b"/hello?via=dup-after-close")
        results.append(body.decode())
        os.closerange(dup_fd, dup_fd + 1)
        with open(path, "rb") as f:
            reused = f.fileno()
            content = os.read(reused, 1 << 20)
        print("RESULT " + json.dumps({"bodies": results, "dup_fd": dup_fd, "reused_fd": reused,
                                      "file_len": len(content)}), flush=True)


if __name__ == "__main__":
    main()
