"""An HTTPS client that imports `ssl` only when told to: prints "READY" with nothing of OpenSSL
loaded, then for each JSON command {"base": "https://host:port", "targets": [...]} on stdin
imports ssl and http.client (on first use) and GETs each target over one keep-alive
connection, printing one
"RESULT <json>" per request (status, headers, body, request_headers, local_port). Trusts
SSL_CERT_FILE. "DONE" at end of input.
"""
import sys
from urllib.parse import urlsplit

import line_protocol


def main():
    assert "ssl" not in sys.modules, "ssl was imported before it was asked for"
    for cmd in line_protocol.commands():
        import http.client
        import ssl

        url = urlsplit(cmd["base"])
        context = ssl.create_default_context()
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=context)
        headers = {"User-Agent": "lazy-tls/1.0", "Accept": "application/json"}
        for target in cmd["targets"]:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            line_protocol.result({
                "status": resp.status,
                "headers": {k.lower(): v for k, v in resp.getheaders()},
                "body": body.decode("utf-8", "replace"),
                "request_headers": dict(headers, **{"accept-encoding": "identity"}),
                "request_body": None,
                "local_port": conn.sock.getsockname()[1],
            })
        conn.close()


if __name__ == "__main__":
    main()
