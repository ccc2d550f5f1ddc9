"""gunicorn settings for the end-to-end tests: an OS-chosen port on loopback, printed on stdout
as "READY <port>" once the workers can be started; the worker count comes from GUNICORN_WORKERS
(default 2, forked sync workers; GUNICORN_WORKER_CLASS and GUNICORN_THREADS choose others, e.g.
gthread with 4 threads). GUNICORN_CERTFILE / GUNICORN_KEYFILE serve HTTPS (`--certfile`).
"""
import os

bind = "127.0.0.1:0"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
loglevel = "warning"
control_socket_disable = True
certfile = os.environ.get("GUNICORN_CERTFILE")
keyfile = os.environ.get("GUNICORN_KEYFILE")


def when_ready(server):
    print(f"READY {server.LISTENERS[0].sock.getsockname()[1]}", flush=True)


def post_worker_init(worker):
    # One write, so that two workers' lines never interleave (print writes the end separately).
    os.write(1, f"WORKER {os.getpid()}\n".encode())
