"""A watched Python process acting as an OTLP/HTTP JSON receiver: counts POST /v1/traces
requests and the spans in them, and prints "SPANS <targets json>" on a "report" stdin line."""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TARGETS = []
POSTS = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        POSTS[0] += 1
        doc = json.loads(body)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    for attr in span.get("attributes", []):
                        if attr["key"] == "http.target":
                            TARGETS.append(attr["value"].get("stringValue"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    for line in sys.stdin:
        if line.strip() == "report":
            print("SPANS " + json.dumps({"posts": POSTS[0], "targets": TARGETS}), flush=True)


if __name__ == "__main__":
    main()
