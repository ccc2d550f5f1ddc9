"""A forward proxy for the end-to-end tests, as a client meets one behind HTTPS_PROXY: a
`CONNECT host:port` opens a tunnel to that server (answered "200 Connection established",
then bytes are relayed both ways untouched). Prints "READY <port>".
"""
import asyncio


async def relay(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def handle(reader, writer):
    method, target, _version = (await reader.readline()).decode("latin-1").split()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    if method != "CONNECT":
        writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        writer.close()
        return
    host, port = target.rsplit(":", 1)
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
