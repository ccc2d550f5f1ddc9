"""A Flask app for the redaction end-to-end test, served by werkzeug on an OS-chosen loopback
port. Prints "READY <port>" once it listens.

POST /users   -> 200 application/json, the request body echoed (the response holds the same
                 secrets as the request)
POST /login   -> 200 application/json {"user": <form field user>, "ok": true}
GET  /search  -> 200 application/json with an e-mail address and a card number in free text
GET  /health  -> 200 application/json (excluded by the test's configuration)
GET  /big?n=N -> 200 application/json, N items each with a token, and a secret at the end
GET  /fail    -> 500 application/json
POST /typed   -> 200, the request body echoed under the request's Content-Type (none if none)
"""
import json

from flask import Flask, Response, request
from werkzeug.serving import make_server

app = Flask(__name__)


def as_json(value, status=200):
    return Response(json.dumps(value), status=status, mimetype="application/json")


@app.post("/users")
def users():
    return Response(request.get_data(), mimetype="application/json")


@app.post("/login")
def login():
    return as_json({"user": request.form.get("user"), "ok": True})


@app.get("/search")
def search():
    return as_json(
        {
            "q": request.args.get("q"),
            "contact": "support.desk.Q7@example.org",
            "note": "card 4012 8888 8888 1881 on file",
        }
    )


@app.get("/health")
def health():
    return as_json({"status": "ok", "build": "hlth-Sk29Wq"})


@app.get("/big")
def big():
    n = int(request.args.get("n", "2000"))
    items = [{"n": i, "token": "tkn-%04d-Xy7Qp" % i} for i in range(n)]
    return as_json({"items": items, "tail": "tail-Gh56Jk"})


@app.get("/fail")
def fail():
    return as_json({"error": "boom"}, status=500)


@app.post("/typed")
def typed():
    response = Response(request.get_data())
    del response.headers["Content-Type"]
    if request.content_type:
        response.headers["Content-Type"] = request.content_type
    return response


if __name__ == "__main__":
    server = make_server("127.0.0.1", 0, app, threaded=False)
    print(f"READY {server.server_port}", flush=True)
    server.serve_forever()
