"""A Flask app for the end-to-end tests (run under gunicorn: `gunicorn flask_app:app`).

Every response carries X-Worker-Pid (the pid of the process that served it) so clients can tell
which process should own the server-side record.

GET  /items/<id>?...  -> 200 application/json {"id": id, "args": {...}}, X-Item-Id: <id>
POST /echo            -> 201, the request body back with the request's content type
GET  /stream?parts=N  -> 200 application/json, streamed (chunked) in N pieces
POST /upload          -> 200 application/json {"received": <body length>}
GET  /big?size=N      -> 200 application/json, a JSON document of exactly N bytes
GET  /gzip            -> 200 application/json, Content-Encoding: gzip
GET  /zstd            -> 200 application/json, Content-Encoding: zstd (two frames)
GET  /image.png       -> 200 image/png
GET  /slow?ms=N       -> 200 application/json {"slept_ms": N}, after N milliseconds
GET  /file?size=N     -> 200 application/json, a JSON document of exactly N bytes served from a
                         file with send_file (gunicorn writes it with sendfile(2))
"""
import gzip
import json
import os
import struct
import time
import zlib

from flask import Flask, Response, request

app = Flask(__name__)


@app.after_request
def worker_pid(response):
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/items/<int:item_id>")
def item(item_id):
    body = {"id": item_id, "args": request.args.to_dict()}
    return Response(json.dumps(body), mimetype="application/json", headers={"X-Item-Id": str(item_id)})


@app.post("/echo")
def echo():
    return Response(request.get_data(), status=201, content_type=request.content_type)


@app.get("/stream")
def stream():
    parts = int(request.args.get("parts", "5"))

    def generate():
        yield "["
        for i in range(parts):
            yield ("," if i else "") + json.dumps({"part": i, "text": "chunk-%d" % i})
        yield "]"

    return Response(generate(), mimetype="application/json")


@app.post("/upload")
def upload():
    data = request.get_data()
    return Response(json.dumps({"received": len(data)}), mimetype="application/json")


def document_of_size(size):
    """A JSON document of exactly `size` bytes (size >= 16)."""
    head = '{"fill": "'
    tail = '"}'
    fill = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(size - len(head) - len(tail)))
    return head + fill + tail


@app.get("/big")
def big():
    return Response(document_of_size(int(request.args["size"])), mimetype="application/json")


@app.get("/gzip")
def gzipped():
    body = json.dumps({"compressed": True, "items": list(range(50)), "note": "gzip " * 40}).encode()
    return Response(
        gzip.compress(body),
        mimetype="application/json",
        headers={"Content-Encoding": "gzip"},
    )


@app.get("/zstd")
def zstd_encoded():
    from backports import zstd

    body = json.dumps({"compressed": "zstd", "items": list(range(80)), "note": "zstd " * 60}).encode()
    half = len(body) // 2
    # Two frames one after the other, as a streaming compressor may send them.
    return Response(
        zstd.compress(body[:half]) + zstd.compress(body[half:]),
        mimetype="application/json",
        headers={"Content-Encoding": "zstd"},
    )


def png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 3)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@app.get("/image.png")
def image():
    return Response(png(32, 32), mimetype="image/png")


@app.get("/file")
def file():
    import tempfile

    from flask import send_file

    size = int(request.args["size"])
    path = os.path.join(tempfile.gettempdir(), "flask_app_file_%d_%d.json" % (os.getpid(), size))
    with open(path, "w") as out:
        out.write(document_of_size(size))
    return send_file(path, mimetype="application/json")


@app.get("/slow")
def slow():
    ms = int(request.args.get("ms", "100"))
    time.sleep(ms / 1000)
    return Response(json.dumps({"slept_ms": ms}), mimetype="application/json")
