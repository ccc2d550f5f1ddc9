"""Runs an ASGI app under uvicorn on an OS-chosen loopback port: `serve_uvicorn.py module:app`.
Prints "READY <port>" once the socket listens (connections wait in the backlog until uvicorn
accepts them).
"""
import socket
import sys

import uvicorn


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(sys.argv[1], log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
