"""OpenSSL calls in a loop, without sockets: a TLS client and server object joined by memory
BIOs in one process, exchanging 1 KB of plaintext each way per round. For the benchmark of
what the sensor's OpenSSL probes cost a process. Usage: tls_loop.py CERT KEY SECONDS; prints
"READY", waits for a line on stdin, runs, prints "OPS <rounds per second>".
"""
import ssl
import sys
import time


def pump(src, dst):
    data = src.read()
    if data:
        dst.write(data)


def main():
    cert, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pump(c_out, s_in)
        pump(s_out, c_in)
    payload = b"x" * 1024
    print("READY", flush=True)
    sys.stdin.readline()
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            client.write(payload)
            pump(c_out, s_in)
            server.read(2048)
            server.write(payload)
            pump(s_out, c_in)
            client.read(2048)
        rounds += 100
    print(f"OPS {rounds / seconds:.0f}", flush=True)


if __name__ == "__main__":
    main()
