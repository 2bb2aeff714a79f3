"""The naive hook: a registry webhook that runs `podman auto-update` itself, standard library only.

What a user could run instead of podhook: a tiny HTTP server that takes the CNCF distribution
registry's notifications (``POST``, ``Authorization: Bearer <token>``), and for a delivery that
holds a manifest push answers 202 and then runs ``podman auto-update`` in the request's thread,
with this process's environment (so the Podman it finds is the one that environment names).
Other events (blob pushes, pulls, auto-update's own pulls) get 200 and run nothing.

Concurrent notifications: each delivery is answered at once (the registry sends the next one
without waiting for the update), and its ``podman auto-update`` waits for a process-wide lock:
one run at a time, one run per manifest push, in arrival order, none merged with another.

``GET /status`` answers JSON: whether a run is under way, how many wait, and every run so far
(received, started and ended as Unix times, the exit status, the containers it updated).

    python bench/naive_hook.py --bind 127.0.0.1:8090 [--token T]   # or NAIVE_HOOK_TOKEN
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_HINT = "manifest"  # OCI/Docker manifests and indexes; blobs are octet-stream or layers
RUN_LOCK = threading.Lock()
STATE_LOCK = threading.Lock()
STATE: dict = {"running": False, "waiting": 0, "runs": []}


def manifest_pushes(body: bytes) -> list[str]:
    """``repository:tag`` of each manifest push in a distribution envelope (others ignored)."""
    try:
        events = json.loads(body).get("events") or []
    except (ValueError, AttributeError):
        return []
    found = []
    for event in events:
        target = event.get("target") or {}
        if event.get("action") == "push" and MANIFEST_HINT in str(target.get("mediaType")):
            found.append(f"{target.get('repository')}:{target.get('tag') or target.get('digest')}")
    return found


def run_autoupdate(received: float, pushes: list[str]) -> None:
    """Run `podman auto-update` once this process's previous run is over; record it."""
    with STATE_LOCK:
        STATE["waiting"] += 1
    with RUN_LOCK:
        with STATE_LOCK:
            STATE["waiting"] -= 1
            STATE["running"] = True
        started = time.time()
        result = subprocess.run(  # noqa: S603 - a fixed command
            ["podman", "auto-update", "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        ended = time.time()
        try:
            rows = json.loads(result.stdout or "[]")
        except ValueError:
            rows = []
        updated = [r.get("ContainerName") for r in rows if r.get("Updated") == "true"]
        run = {
            "pushes": pushes,
            "received": received,
            "started": started,
            "ended": ended,
            "exit": result.returncode,
            "updated": updated,
            "stderr": result.stderr.strip()[-500:],
        }
        with STATE_LOCK:
            STATE["running"] = False
            STATE["runs"].append(run)
        print(json.dumps(run), flush=True)


class Handler(BaseHTTPRequestHandler):
    token: str | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        with STATE_LOCK:
            body = json.dumps(STATE).encode()
        self._answer(200 if self.path == "/status" else 404, body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        received = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        given = self.headers.get("Authorization", "")
        if self.token is not None and not hmac.compare_digest(given, f"Bearer {self.token}"):
            self._answer(401, b'{"error": "unauthorized"}')
            return
        pushes = manifest_pushes(body)
        if not pushes:
            self._answer(200, b'{"ran": false}')
            return
        self._answer(202, b'{"ran": true}')
        run_autoupdate(received, pushes)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{time.time():.3f} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:8090")
    parser.add_argument("--token", default=os.environ.get("NAIVE_HOOK_TOKEN"))
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    Handler.token = args.token
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"naive hook on {args.bind}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
