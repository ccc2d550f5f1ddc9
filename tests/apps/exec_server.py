"""An http.server that turns into another program in the same process.

GET /hello -> 200 application/json {"program": "exec_server"}
GET /exec  -> no response: the process replaces itself (execve, same pid) with
              `python -X sel=after http_server.py <port>`, its environment's HT_SERVICE_NAME
              set to EXEC_SERVICE_NAME. The client's connection closes without a response.
Prints "READY <port>" once listening (and http_server.py prints it again after the exec).
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/exec"):
            port = str(self.server.server_address[1])
            env = dict(os.environ, HT_SERVICE_NAME=os.environ["EXEC_SERVICE_NAME"])
            argv = [sys.executable, "-X", "sel=after", "http_server.py", port]
            sys.stdout.flush()
            os.execve(sys.executable, argv, env)
        body = json.dumps({"program": "exec_server"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
