"""The scenarios of the Hypertrace agent's own Flask and requests tests, in one process: a Flask
2.x app served by werkzeug (a thread per request) on localhost:<port>, and a `requests` client
in the same process driven by JSON commands on stdin. Run with the test venv's agent venv
(Flask 2.x, hypertrace-agent); `--agent` instruments the app and `requests` with the agent,
configured from HT_* variables, as its documentation shows.

    parity_app.py PORT [--agent]

Prints "READY" once serving. Commands, one JSON object per line:
{"method", "path", "headers": {...}, "body_hex": "..."|null, "pad": N|null}
    One request with `requests` to http://localhost:PORT<path>, with the body given in hex
    (or, with "pad", the JSON document {"pad": "xxx..."} of exactly N bytes); prints
    "RESULT <json>" with the status and the response headers.
"flush"
    Flushes the agent's spans (no-op without agent); prints "FLUSHED".

Routes (those of the agent's tests):
GET|POST /route1 -> 200 application/json '{ "a": "a", "xyz": "xyz" }', header tester3: tester3
POST /form       -> 200 application/json {"ok": true}
Both read the request body whole (and nothing else of it), with or without the agent.
"""
import json
import logging
import sys
import threading

import flask
import requests
from flask import Flask
from werkzeug.serving import make_server

app = Flask(__name__)
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@app.route("/route1", methods=["GET", "POST"])
def route1():
    flask.request.get_data()
    response = flask.Response(mimetype="application/json")
    response.headers["tester3"] = "tester3"
    response.data = '{ "a": "a", "xyz": "xyz" }'
    return response


@app.post("/form")
def form():
    flask.request.get_data()
    return flask.Response('{"ok": true}', mimetype="application/json")


def main():
    port = int(sys.argv[1])
    agent = "--agent" in sys.argv[2:]
    if agent:
        from hypertrace.agent import Agent

        Agent().instrument(app)
    server = make_server("localhost", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == '"flush"':
            if agent:
                from opentelemetry import trace

                trace.get_tracer_provider().force_flush()
            print("FLUSHED", flush=True)
            continue
        cmd = json.loads(line)
        body = bytes.fromhex(cmd["body_hex"]) if cmd.get("body_hex") is not None else None
        if cmd.get("pad"):
            head, tail = '{"pad": "', '"}'
            body = (head + "x" * (cmd["pad"] - len(head) - len(tail)) + tail).encode()
        resp = requests.request(
            cmd["method"],
            f"http://localhost:{port}{cmd['path']}",
            headers=cmd.get("headers") or {},
            data=body,
        )
        print("RESULT " + json.dumps({"status": resp.status_code, "headers": dict(resp.headers)}), flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
