"""The FastAPI app `cargo xtask bench apps` loads, served by uvicorn (`serve_uvicorn.py
bench_fastapi:app`): GET /small answers a small JSON document, POST /echo answers the JSON
document it was sent (parsed and serialised again), GET /ready answers 204 (the bench's
readiness probe). BENCH_AGENT=hypertrace instruments it with the Hypertrace agent (configured
from HT_* variables; the agent hooks FastAPI's set-up, so it starts before the app is made);
under `opentelemetry-instrument` OpenTelemetry instruments it by itself.
"""
import os

if os.environ.get("BENCH_AGENT") == "hypertrace":
    from hypertrace.agent import Agent

    Agent().instrument()

from fastapi import FastAPI, Request, Response  # noqa: E402

app = FastAPI()

SMALL = {"id": 42, "name": "widget", "tags": ["a", "b"], "price": 9.99, "in_stock": True}


@app.get("/small")
async def small():
    return SMALL


@app.post("/echo")
async def echo(request: Request):
    return await request.json()


@app.get("/ready", status_code=204)
async def ready():
    return Response(status_code=204)
