"""Reads a large file, then makes one HTTP request: the file's bytes must never be captured.

argv: <file> <url>. Prints "READY", waits for a line on stdin, then reads the whole file in 1 MiB
reads, makes the request, and prints "DONE <bytes read> <status>".
"""
import sys
import urllib.request


def main():
    path, url = sys.argv[1], sys.argv[2]
    print("READY", flush=True)
    sys.stdin.readline()
    total = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    with urllib.request.urlopen(url) as resp:
        resp.read()
        print(f"DONE {total} {resp.status}", flush=True)


if __name__ == "__main__":
    main()
