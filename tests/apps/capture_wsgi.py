"""A minimal WSGI app for gunicorn fork tests: answers {"pid": <worker pid>, "path": ...}."""
import json
import os


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "path": environ.get("PATH_INFO", "")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
