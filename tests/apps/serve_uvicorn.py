"""Runs an ASGI app under uvicorn on an OS-chosen loopback port: `serve_uvicorn.py module:app`.
Prints "READY <port>" once the socket listens (connections wait in the backlog until uvicorn
accepts them). UVICORN_SSL_CERTFILE / UVICORN_SSL_KEYFILE serve HTTPS (`--ssl-certfile`,
`--ssl-keyfile`: asyncio's memory-BIO TLS); UVICORN_TIMEOUT_KEEP_ALIVE sets the idle keep-alive
timeout in seconds (default 5). UVICORN_HOST="::" listens dual-stack instead (IPv6, with IPv4
peers as IPv4-mapped addresses).
"""
import os
import socket
import sys

import uvicorn


def main():
    host = os.environ.get("UVICORN_HOST", "127.0.0.1")
    if ":" in host:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        sys.argv[1],
        log_level="warning",
        access_log=False,
        ssl_certfile=os.environ.get("UVICORN_SSL_CERTFILE"),
        ssl_keyfile=os.environ.get("UVICORN_SSL_KEYFILE"),
        timeout_keep_alive=int(os.environ.get("UVICORN_TIMEOUT_KEEP_ALIVE", "5")),
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
