"""A FastAPI app for the end-to-end tests (run under uvicorn: `serve_uvicorn.py fastapi_app:app`).

GET  /items/{id}?q=...  -> 200 application/json {"id": id, "q": q}, X-Item-Id: <id>
POST /echo              -> 201, the request body back with the request's content type
GET  /stream?parts=N    -> 200 application/json, a StreamingResponse (chunked) in N pieces
GET  /n/{i}             -> 200 application/json {"i": i}
GET  /id/{rid}          -> 200 application/json {"id": rid, "header": <X-Request-Id>},
                           X-Request-Id echoed
POST /upload            -> 200 application/json {"received": <body length>}
GET  /big?size=N        -> 200 application/json, a JSON document of exactly N bytes
"""
import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None):
    return JSONResponse({"id": item_id, "q": q}, headers={"X-Item-Id": str(item_id)})


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return Response(
        body,
        status_code=201,
        media_type=request.headers.get("content-type", "application/octet-stream"),
    )


@app.get("/stream")
async def stream(parts: int = 5):
    async def generate():
        yield "["
        for i in range(parts):
            await asyncio.sleep(0)
            yield ("," if i else "") + json.dumps({"part": i, "text": "piece-%d" % i})
        yield "]"

    return StreamingResponse(generate(), media_type="application/json")


@app.get("/n/{i}")
async def numbered(i: int):
    return JSONResponse({"i": i})


@app.get("/id/{rid}")
async def echo_id(rid: str, request: Request):
    header = request.headers.get("x-request-id")
    return JSONResponse(
        {"id": rid, "header": header, "port": request.client.port},
        headers={"X-Request-Id": header or ""},
    )


@app.post("/upload")
async def upload(request: Request):
    body = await request.body()
    return Response(json.dumps({"received": len(body)}), media_type="application/json")


def document_of_size(size):
    """A JSON document of exactly `size` bytes (size >= 16)."""
    head = '{"fill": "'
    tail = '"}'
    fill = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(size - len(head) - len(tail)))
    return head + fill + tail


@app.get("/big")
async def big(size: int):
    return Response(document_of_size(size), media_type="application/json")
