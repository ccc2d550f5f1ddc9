"""Makes one request and exits at once (os._exit, the socket never closed by Python).
argv: <port> <target>. The request's header fields are exactly those listed here (http.client
adds none). Prints "RESULT <json>" (what was sent and received, and the local port) just before
exiting.
"""
import http.client
import json
import os
import sys


def main():
    port, target = int(sys.argv[1]), sys.argv[2]
    headers = {
        "Host": f"127.0.0.1:{port}",
        "User-Agent": "short-lived/1.0",
        "Accept": "application/json",
        "X-Job": "nightly",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    result = {
        "status": resp.status,
        "headers": {k: v for k, v in resp.getheaders()},
        "body": body.decode(),
        "request_headers": headers,
        "request_body": None,
        "local_port": conn.sock.getsockname()[1],
    }
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
