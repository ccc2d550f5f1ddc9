"""Holds idle keep-alive connections open to a server: argv <port> <count> [https]. Each
connection sends one GET /small and reads the answer (so the server and a sensor have seen an
exchange on it), then stays open. Raises its own RLIMIT_NOFILE to the hard limit. Prints
"HELD <count> <failed>" once every connection is set up, then holds them until stdin closes.
"""
import resource
import socket
import ssl
import sys


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    https = len(sys.argv) > 3 and sys.argv[3] == "https"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = ssl._create_unverified_context() if https else None
    request = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
    held, failed = [], 0
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if context:
                sock = context.wrap_socket(sock, server_hostname="localhost")
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                answer += chunk
            held.append(sock)
        except OSError:
            failed += 1
    print(f"HELD {len(held)} {failed}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
