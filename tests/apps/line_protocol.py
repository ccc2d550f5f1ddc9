"""The line protocol the end-to-end tests drive Python clients with: "READY" once the process is
ready, then one JSON command per stdin line; each result is printed as "RESULT <json>", and
"DONE" at end of input."""
import json
import sys


def commands():
    """Prints "READY", then yields each JSON command read from stdin (blank lines skipped);
    prints "DONE" at end of input."""
    print("READY", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)
    print("DONE", flush=True)


def result(value):
    """Prints one result line."""
    print("RESULT " + json.dumps(value), flush=True)


def serve(handlers, default_op=None):
    """Answers each command with handlers[command["op"]] (`default_op` when it has none),
    printing what the handler returns as the command's result."""
    for command in commands():
        op = command.get("op", default_op)
        handler = handlers.get(op)
        if handler is None:
            raise SystemExit(f"unknown op {op}")
        result(handler(command))
