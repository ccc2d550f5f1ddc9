"""The Flask app `cargo xtask bench apps` loads, served by gunicorn (`bench_flask:app`):
GET /small answers a small JSON document, POST /echo answers the JSON document it was sent
(parsed and serialised again), GET /ready answers 204 (the bench's readiness probe).
BENCH_AGENT=hypertrace instruments it with the Hypertrace agent (configured from HT_*
variables), as the agent's documentation shows; under `opentelemetry-instrument` OpenTelemetry
instruments it by itself.
"""
import os

from flask import Flask, jsonify, request

app = Flask(__name__)

SMALL = {"id": 42, "name": "widget", "tags": ["a", "b"], "price": 9.99, "in_stock": True}


@app.get("/small")
def small():
    return jsonify(SMALL)


@app.post("/echo")
def echo():
    return jsonify(request.get_json())


@app.get("/ready")
def ready():
    return "", 204


if os.environ.get("BENCH_AGENT") == "hypertrace":
    from hypertrace.agent import Agent

    Agent().instrument(app)
