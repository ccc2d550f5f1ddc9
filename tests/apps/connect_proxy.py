"""A forward proxy for the end-to-end tests, as a client meets one behind HTTPS_PROXY or
HTTP_PROXY. A `CONNECT host:port` opens a tunnel to that server (answered "200 Connection
established", then bytes are relayed both ways untouched). A request in absolute-form
(`GET http://host:port/path HTTP/1.1`) is forwarded to its origin in origin-form, with the
`Proxy-*` headers removed, over one upstream connection per origin and client connection; the
answer is relayed back. Only Content-Length framing is understood (what the test apps send).
Prints "READY <port>".
"""
import asyncio
from urllib.parse import urlsplit


async def relay(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def read_head(reader):
    """The header lines after a start line (each with its CRLF), and the Content-Length."""
    lines, length = [], 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        lines.append(line)
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return lines, length


async def tunnel(target, reader, writer):
    host, port = target.rsplit(":", 1)
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))


async def forward(start, reader, writer):
    upstreams = {}
    try:
        while start:
            method, target, version = start.decode("latin-1").split()
            headers, length = await read_head(reader)
            body = await reader.readexactly(length)
            url = urlsplit(target)
            origin = (url.hostname, url.port or 80)
            if origin not in upstreams:
                upstreams[origin] = await asyncio.open_connection(*origin)
            up_reader, up_writer = upstreams[origin]
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [h for h in headers if not h.lower().startswith(b"proxy-")]
            up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1"))
            up_writer.write(b"".join(kept) + b"\r\n" + body)
            await up_writer.drain()
            status = await up_reader.readline()
            answer_headers, answer_length = await read_head(up_reader)
            answer = await up_reader.readexactly(answer_length)
            writer.write(status + b"".join(answer_headers) + b"\r\n" + answer)
            await writer.drain()
            start = await reader.readline()
    finally:
        for _, up_writer in upstreams.values():
            up_writer.close()
        writer.close()


async def handle(reader, writer):
    start = await reader.readline()
    method, target, _version = start.decode("latin-1").split()
    if method == "CONNECT":
        await read_head(reader)
        await tunnel(target, reader, writer)
    else:
        await forward(start, reader, writer)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
