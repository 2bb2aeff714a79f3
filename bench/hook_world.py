"""What the podhook-versus-naive-hook benchmarks share: the hooks on the integration stack,
``/run/systemd/private`` for `podman auto-update`, and a watch on what the containers run.

Not a benchmark by itself: imported by bench/push_to_running.py, bench/burst.py and
bench/job_trace.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from redis import Redis
from rq import Queue, Worker
from rq.registry import StartedJobRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness  # noqa: E402

from workers.hosts import get_hosts  # noqa: E402
from workers.queueing import queue_name  # noqa: E402

TOKEN = "bench-token"
HOST = "bench-host"
PODHOOK = str(Path(sys.executable).parent / "podhook")
NAIVE_HOOK = str(Path(__file__).resolve().parent / "naive_hook.py")
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the link to systemd and the stack are removed."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))


def percentile(values: Iterable[float], share: float) -> float:
    """The nearest-rank percentile (0.9: p90) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * share + 0.999) - 1))]


# --------------------------------------------------------------------------------------------
# /run/systemd/private


@contextlib.contextmanager
def system_manager_socket(stack: harness.Stack) -> Iterator[Path]:
    """The harness's link of ``/run/systemd/private`` to the stack's user manager for the
    block (Podman 4.3's auto-update as root dials it); a SystemExit when the path is taken."""
    try:
        with harness.system_manager_socket(stack) as target:
            yield target
    except harness.SocketTakenError as error:
        raise SystemExit(str(error)) from None


# --------------------------------------------------------------------------------------------
# the two hooks


class Podhook:
    """`podhook serve` (kept running) and `podhook worker` (started and stopped per round, so
    that it neither watches nor reacts while the naive hook works)."""

    def __init__(self, stack: harness.Stack, settle: float, worker_argv: Iterable[str] = ()):
        self.stack = stack
        self.redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
        self.env = {
            "PODHOOK_WEBHOOK_TOKEN": TOKEN,
            "PODHOOK_HOST_ID": HOST,
            "PODHOOK_SETTLE_SECONDS": str(settle),
            "PODHOOK_JOB_RETRIES": "0",
        }
        self.worker_argv = list(worker_argv) or [PODHOOK, "worker"]
        port = harness.free_port()
        stack.start_process(
            [PODHOOK, "serve", "--bind", f"127.0.0.1:{port}"],
            env=self.env,
            name="gunicorn",
            ready_url=f"http://127.0.0.1:{port}/healthz",
        )
        self.url = f"http://127.0.0.1:{port}/v1/webhooks/distribution"
        self.worker: harness.ManagedProcess | None = None

    def start_worker(self, processes: int = 1, env: Mapping[str, str] | None = None) -> None:
        """Start the worker and wait until its start-up reconcile is over and it is idle."""
        self.stop_worker()
        argv = [*self.worker_argv, *(["--processes", str(processes)] if processes > 1 else [])]
        self.worker = self.stack.start_process(
            argv,
            env={**self.env, **(env or {})},
            name="worker",
            ready=lambda: HOST in get_hosts(self.redis) and self.idle(processes),
            timeout=120,
        )

    def idle(self, processes: int = 1) -> bool:
        """Whether the host's queue is empty and its workers (``processes`` of them) idle."""
        queue = Queue(queue_name(HOST), connection=self.redis)
        workers = Worker.all(queue=queue)
        # A dequeued job sits in RQ's intermediate list until the worker marks it started.
        return (
            queue.count == 0
            and not self.redis.llen(queue.intermediate_queue_key)
            and StartedJobRegistry(queue=queue).count == 0
            and len(workers) >= processes
            and all(w.get_state() == "idle" for w in workers)
        )

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop(grace=30)
            self.worker = None
            for worker in Worker.all(queue=Queue(queue_name(HOST), connection=self.redis)):
                worker.register_death()


class NaiveHook:
    """bench/naive_hook.py with the stack's Podman environment."""

    def __init__(self, stack: harness.Stack):
        port = harness.free_port()
        self.status_url = f"http://127.0.0.1:{port}/status"
        stack.start_process(
            [sys.executable, NAIVE_HOOK, "--bind", f"127.0.0.1:{port}", "--token", TOKEN],
            env=stack.podman_env,
            name="naive-hook",
            ready_port=port,
        )
        self.url = f"http://127.0.0.1:{port}/"

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.status_url, timeout=5) as response:  # noqa: S310
            return dict(json.load(response))

    def wait_idle(self, runs: int, timeout: float = 300) -> list[dict[str, Any]]:
        """Wait until at least ``runs`` runs are over and none is under way or waiting."""

        def idle() -> list[dict[str, Any]] | None:
            state = self.status()
            done = len(state["runs"]) >= runs and not state["running"] and not state["waiting"]
            return state["runs"] if done else None

        return list(harness.wait_for(idle, timeout, f"{runs} naive hook runs", interval=0.2))


# --------------------------------------------------------------------------------------------
# what runs


class PodmanAPI:
    """One request to the stack's Podman service for the labeled containers that run."""

    def __init__(self, stack: harness.Stack):
        self.path = stack.env["PODHOOK_PODMAN_URL"].removeprefix("unix://")
        filters = quote(json.dumps({"label": ["io.containers.autoupdate"]}))
        self.request = f"/v4.0.0/libpod/containers/json?filters={filters}"

    def running(self) -> dict[str, str]:
        """Image id of each running labeled container, by name."""
        connection = http.client.HTTPConnection("localhost", timeout=30)
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.settimeout(30)
        connection.sock.connect(self.path)
        try:
            connection.request("GET", self.request)
            entries = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        return {
            entry["Names"][0]: entry["ImageID"] for entry in entries if entry["State"] == "running"
        }


def image_id(stack: harness.Stack, repository: str, tag: str) -> str:
    """The id Podman gives ``repository:tag`` of the test registry once pulled: its config's
    digest, read from the manifest (a GET of the manifest makes no pull event)."""
    assert stack.registry is not None
    request = urllib.request.Request(
        f"{stack.registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local
        return str(json.load(response)["config"]["digest"]).removeprefix("sha256:")


def active_units(stack: harness.Stack, units: Iterable[str]) -> set[str]:
    """Those of ``units`` that systemd says are active (one systemctl call)."""
    units = list(units)
    if not units:
        return set()
    shown = stack.systemctl("show", "--property=ActiveState", *units, check=False)
    states = [line.partition("=")[2] for line in shown.splitlines() if line.strip()]
    return {unit for unit, state in zip(units, states, strict=False) if state == "active"}


def wait_running(
    stack: harness.Stack,
    api: PodmanAPI,
    expected: Mapping[str, str],
    timeout: float = 180.0,
    interval: float = 0.05,
) -> dict[str, float]:
    """Poll until every container of ``expected`` (name → image id) runs that image and its
    unit (``container-<name>.service``) is active; return the time each was first seen so."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(expected):
        now = time.time()
        running = api.running()
        candidates = [n for n, want in expected.items() if n not in seen and running.get(n) == want]
        for unit in active_units(stack, [f"container-{name}.service" for name in candidates]):
            seen[unit.removeprefix("container-").removesuffix(".service")] = now
        if time.monotonic() > deadline:
            missing = sorted(set(expected) - set(seen))
            raise SystemExit(f"timed out: {', '.join(missing)} not running their new image")
        time.sleep(interval)
    return seen


def push_all(stack: harness.Stack, locals_: Mapping[str, tuple[str, str, str]]) -> dict[str, float]:
    """Push each built image (name → (local, repository, tag)) at once, one skopeo each; return
    when each push ended (Unix time)."""
    assert stack.registry is not None
    processes = {
        name: subprocess.Popen(  # noqa: S603 - skopeo, as harness.push_image runs it
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"containers-storage:{local}",
                f"docker://{stack.registry.host}/{repository}:{tag}",
            ],
            env=stack.build_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, (local, repository, tag) in locals_.items()
    }
    ended: dict[str, float] = {}
    while len(ended) < len(processes):
        for name, process in processes.items():
            if name not in ended and process.poll() is not None:
                ended[name] = time.time()
                if process.returncode != 0:
                    raise SystemExit(f"pushing {name}: {process.stderr.read().decode()[-500:]}")
        time.sleep(0.01)
    for process in processes.values():
        process.stderr.close()
    return ended
