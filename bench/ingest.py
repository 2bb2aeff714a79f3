"""Ingest under wrk: podhook's webhook route against an empty Flask endpoint, same gunicorn.

Starts a private redis-server and registers one host, so every delivery is queued. Writes N
distinct distribution envelopes (the recorded manifest push of tests/payloads/distribution,
each of its own repository, digest and event id: no push joins another's job and no delivery
id repeats), then runs `wrk` with bench/ingest.lua, which cycles through them with podhook's
Authorization header, against `podhook serve` and against bench/empty_app.py (a Flask route
answering 202 with a small JSON body) under the same gunicorn options: worker count, worker
class, threads. Prints for both: requests/s, p50, p99, errors (non-2xx answers and socket
errors), each gunicorn worker's RSS after the run; the ratio podhook/empty; Redis commands per
delivery from INFO commandstats around the podhook run. A separate in-process run through the
WSGI interface, with redis-py's socket writes counted, tells client round trips (a pipeline or
MULTI/EXEC is one) and commands apart, per podhook function that sends them. `--profile N`
adds a cProfile of N deliveries through the WSGI interface (podhook's logging on, to
/dev/null). Bounded: fixed durations, loopback only. Figures are noisy on a small, shared
machine: wrk, Redis and the gunicorn workers share its cores.

    .venv/bin/python bench/ingest.py [--workers 4] [--threads 2] [--connections 16]
        [--duration 10s] [--envelopes 40000] [--round-trips 200] [--profile 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import dataclasses
import io
import json
import logging.config
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness  # noqa: E402

from webhook.serving import gunicorn_options  # noqa: E402
from workers.hosts import register_host  # noqa: E402
from workers.queueing import get_queue  # noqa: E402
from workers.settings import Settings  # noqa: E402

TOKEN = "bench-token"
HOST = "bench-host"
PATH = "/v1/webhooks/distribution"
SAMPLE = ROOT / "tests" / "payloads" / "distribution" / "recorded-manifest-push.json"
SCRIPT = Path(__file__).resolve().parent / "ingest.lua"
CONTENT_TYPE = "application/vnd.docker.distribution.events.v1+json"
MB = 1024 * 1024

# The project's performance goals for ingest.
GOAL_RATIO = 0.5
GOAL_ROUND_TRIPS = 3
GOAL_RSS_MB = 60


def envelope(sample: dict[str, Any], index: int) -> bytes:
    """The recorded manifest push, made a push of repository ``team/app-<index>``, with its
    own digest and ids."""
    data = copy.deepcopy(sample)
    event = data["events"][0]
    digest = "sha256:" + f"{index:064x}"
    repository = f"team/app-{index}"
    event["id"] = f"bench-{index:08d}-1c7a-443d-8b4c-620962d6dd00"
    event["request"]["id"] = f"bench-{index:08d}-114d-44fc-b1cb-66622881df86"
    target = event["target"]
    target["digest"] = digest
    target["repository"] = repository
    target["url"] = f"http://{event['request']['host']}/v2/{repository}/manifests/{digest}"
    return json.dumps(data, separators=(",", ":")).encode()


def write_envelopes(path: Path, count: int, start: int = 0) -> list[bytes]:
    """Write ``count`` distinct envelopes to ``path``, one a line (what bench/ingest.lua reads)."""
    sample = json.loads(SAMPLE.read_text())
    bodies = [envelope(sample, start + i) for i in range(count)]
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return bodies


def serve_podhook(port: int, workers: int, redis_url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PODHOOK_REDIS_URL": redis_url, "PODHOOK_WEBHOOK_TOKEN": TOKEN}
    podhook = str(Path(sys.executable).parent / "podhook")
    with log.open("wb") as out:
        return subprocess.Popen(
            [podhook, "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def serve_empty(port: int, workers: int, log: Path) -> subprocess.Popen:
    """bench/empty_app.py under the gunicorn options of `podhook serve` (webhook/serving.py)."""
    settings = dataclasses.replace(Settings(), bind=f"127.0.0.1:{port}", web_workers=workers)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        *gunicorn_options(settings),
        "--access-logfile",
        "-",
        "--pythonpath",
        str(Path(__file__).resolve().parent),
        "empty_app:app",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out)


def worker_pids(master: int) -> list[int]:
    """The pids of the processes whose parent is ``master`` (gunicorn's workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(server: subprocess.Popen, port: int, workers: int, log: Path) -> None:
    """Wait until gunicorn answers /healthz and all its workers have started."""

    def up() -> bool:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with {server.returncode}:\n{log.read_text()}")
        return harness.port_open(port) and len(worker_pids(server.pid)) >= workers

    harness.wait_for(up, 30, "gunicorn")
    # Every worker imports and builds its app before it accepts: a second of /healthz from
    # all connections brings each of them up before anything is measured.
    subprocess.run(
        ["wrk", "-t1", "-c16", "-d1s", f"http://127.0.0.1:{port}/healthz"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run_wrk(port: int, envelopes: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run wrk with bench/ingest.lua; its figures, as the script's done() prints them."""
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}",
        "-s",
        str(SCRIPT),
        f"http://127.0.0.1:{port}{PATH}",
        "--",
        str(envelopes),
        TOKEN,
        str(args.threads),
    ]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("INGEST_RESULT "):
            result = json.loads(line.removeprefix("INGEST_RESULT "))
            break
    else:
        raise SystemExit(f"wrk printed no result:\n{out}")
    statuses = {int(status): n for status, n in result["statuses"].items()}
    socket_errors = sum(result[k] for k in ("connect", "read", "write", "timeout"))
    return {
        "per_second": result["requests"] / (result["duration_us"] / 1e6),
        "requests": result["requests"],
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "statuses": statuses,
        "non_2xx": sum(n for status, n in statuses.items() if not 200 <= status < 300),
        "socket_errors": socket_errors,
    }


def measure(
    label: str, start: Any, port: int, envelopes: Path, args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    server = start(port, args.workers, log)
    try:
        wait_ready(server, port, args.workers, log)
        figures = run_wrk(port, envelopes, args)
        figures["rss_mb"] = [rss_mb(pid) for pid in worker_pids(server.pid)]
        return figures
    except BaseException:
        print(f"{label}: gunicorn's log:\n{log.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)


def command_calls(redis: Redis) -> tuple[Counter[str], int]:
    """Calls per command (INFO commandstats) and total_commands_processed, in one INFO."""
    info = redis.info("all")
    calls = Counter(
        {
            key.removeprefix("cmdstat_"): value["calls"]
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
    )
    return calls, info["total_commands_processed"]


def print_figures(label: str, f: dict[str, Any]) -> None:
    rss = " ".join(f"{mb:.1f}" for mb in f["rss_mb"])
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(f["statuses"].items()))
    print(
        f"{label:>7}: {f['per_second']:7.0f} req/s  p50 {f['p50_ms']:6.1f} ms  "
        f"p99 {f['p99_ms']:6.1f} ms  errors {f['non_2xx'] + f['socket_errors']} "
        f"(non-2xx {f['non_2xx']}, socket {f['socket_errors']}; answers {statuses})  "
        f"worker RSS MB: {rss}"
    )


def goal(met: bool) -> str:
    return "met" if met else "MISSED"


# --------------------------------------------------------------------------------------------
# Round trips and time per delivery, in process, through the WSGI interface


def resp_command_names(packed: bytes) -> list[str]:
    """The command names in a buffer of RESP arrays, as redis-py sends them."""
    names, pos = [], 0
    while pos < len(packed):
        end = packed.index(b"\r\n", pos)
        count = int(packed[pos + 1 : end])
        pos = end + 2
        for i in range(count):
            end = packed.index(b"\r\n", pos)
            size = int(packed[pos + 1 : end])
            if i == 0:
                names.append(packed[end + 2 : end + 2 + size].decode().upper())
            pos = end + 2 + size + 2
    return names


def podhook_caller() -> str:
    """The innermost podhook function (webhook/, workers/) on the stack, past the retry
    wrapper of workers/redis_connection.py."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if path.parent in (ROOT / "webhook", ROOT / "workers") and path.stem != "redis_connection":
            return f"{path.parent.name}/{path.stem}.{frame.name}"
    return "?"


@contextlib.contextmanager
def counting_round_trips(trips: list[tuple[str, tuple[str, ...]]]) -> Any:
    """Record each socket write of redis-py (one round trip: a command, or a pipeline or
    MULTI/EXEC sent at once) as (podhook caller, command names) in ``trips``."""
    from redis.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, (bytes, str)) else command
        packed = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        trips.append((podhook_caller(), tuple(resp_command_names(packed))))
        original(self, command, check_health)

    AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def in_process_app(redis_url: str) -> Any:
    """podhook's app as gunicorn's workers build it, its logging configured as `podhook serve`
    configures it but written to /dev/null."""
    from webhook.app import create_app
    from workers.logs import logging_config
    from workers.settings import load_settings

    settings = load_settings(overrides={"redis_url": redis_url, "webhook_token": TOKEN})
    devnull = open(os.devnull, "w")  # noqa: SIM115 (kept open for the loggers)
    with contextlib.redirect_stderr(devnull), contextlib.redirect_stdout(devnull):
        logging.config.dictConfig(logging_config(settings))
    return create_app(settings)


def post_wsgi(app: Any, body: bytes) -> int:
    """Post one delivery through the WSGI interface; its status."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": CONTENT_TYPE,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    answer: list[str] = []
    chunks = app(environ, lambda status, headers, exc_info=None: answer.append(status))
    b"".join(chunks)
    getattr(chunks, "close", lambda: None)()
    return int(answer[0].split()[0])


def round_trips(app: Any, bodies: list[bytes]) -> tuple[int, list[tuple[str, tuple[str, ...]]]]:
    """Deliver ``bodies`` (after two unmeasured ones, for connections and scripts); the number
    measured and every round trip they made."""
    for body in bodies[:2]:
        post_wsgi(app, body)
    trips: list[tuple[str, tuple[str, ...]]] = []
    with counting_round_trips(trips):
        for body in bodies[2:]:
            status = post_wsgi(app, body)
            if status != 202:
                raise SystemExit(f"in-process delivery answered {status}")
    return len(bodies) - 2, trips


def print_round_trips(measured: int, trips: list[tuple[str, tuple[str, ...]]]) -> float:
    per_site: dict[tuple[str, tuple[str, ...]], int] = Counter(trips)
    commands = sum(len(names) for _, names in trips)
    print(
        f"client side, in process ({measured} deliveries through WSGI): "
        f"{len(trips) / measured:.2f} round trips, {commands / measured:.2f} commands per delivery"
    )
    for (site, names), n in sorted(per_site.items(), key=lambda item: -item[1]):
        print(f"  {n / measured:5.2f} x  {site:<40} {' '.join(names)}")
    return len(trips) / measured


def profile(app: Any, bodies: list[bytes]) -> None:
    """cProfile ``bodies`` through the WSGI interface; time per delivery in podhook's functions
    (cumulative) and in the costliest functions of all (own time)."""
    post_wsgi(app, bodies[0])
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for body in bodies[1:]:
        post_wsgi(app, body)
    profiler.disable()
    n = len(bodies) - 1
    elapsed = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    print(
        f"cProfile, {n} deliveries through WSGI in one thread: {elapsed / n * 1e6:.0f} us "
        "per delivery under the profiler"
    )
    rows = stats.stats  # type: ignore[attr-defined]
    print("  podhook functions, cumulative us per delivery:")
    podhook_rows = [
        (key, row)
        for key, row in rows.items()
        if Path(key[0]).parent in (ROOT / "webhook", ROOT / "workers")
    ]
    for key, row in sorted(podhook_rows, key=lambda item: -item[1][3])[:16]:
        name = f"{Path(key[0]).parent.name}/{Path(key[0]).stem}.{key[2]}"
        print(f"    {row[3] / n * 1e6:7.0f}  {name}")
    print("  costliest functions by own time, us per delivery:")
    for key, row in sorted(rows.items(), key=lambda item: -item[1][2])[:12]:
        where = key[0] if key[0] == "~" else "/".join(Path(key[0]).parts[-2:])
        print(f"    {row[2] / n * 1e6:7.0f}  {key[2]} ({where}:{key[1]}) x{row[1] / n:.0f}")


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--duration", default="10s", help="wrk duration of each run")
    parser.add_argument("--envelopes", type=int, default=40000, help="distinct envelopes")
    parser.add_argument("--round-trips", type=int, default=200, help="in-process deliveries")
    parser.add_argument("--profile", type=int, default=0, help="deliveries to profile (0: none)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run scripts/install-deps.sh (apt package wrk)")
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        envelopes = work / "envelopes.jsonl"
        write_envelopes(envelopes, args.envelopes)
        server = harness.start_redis(work / "redis")
        redis = Redis.from_url(server.url)
        try:
            register_host(redis, HOST)
            print(
                f"wrk -t{args.threads} -c{args.connections} -d{args.duration}, "
                f"gunicorn {args.workers} workers (podhook serve's worker class and threads), "
                f"{args.envelopes} distinct distribution envelopes, 1 registered host; "
                f"{os.cpu_count()} cores shared by wrk, Redis and gunicorn: figures are noisy"
            )
            empty = measure(
                "empty", serve_empty, harness.free_port(), envelopes, args, work / "empty.log"
            )
            print_figures("empty", empty)

            calls_before, total_before = command_calls(redis)
            podhook = measure(
                "podhook",
                lambda port, workers, log: serve_podhook(port, workers, server.url, log),
                harness.free_port(),
                envelopes,
                args,
                work / "podhook.log",
            )
            calls_after, total_after = command_calls(redis)
            print_figures("podhook", podhook)

            queued = podhook["statuses"].get(202, 0)
            jobs = get_queue(redis, HOST).count
            if podhook["requests"] > args.envelopes:
                print(
                    f"note: {podhook['requests']} requests for {args.envelopes} envelopes: "
                    "repeats were answered as duplicates (raise --envelopes)"
                )
            if jobs < queued:
                print(f"note: {jobs} jobs in {HOST}'s queue for {queued} deliveries answered 202")

            ratio = podhook["per_second"] / empty["per_second"]
            errors = podhook["non_2xx"] + podhook["socket_errors"]
            worst_rss = max(podhook["rss_mb"])
            print(
                f"ratio podhook/empty: {ratio:.2f}x  "
                f"(goal: >= {GOAL_RATIO}x: {goal(ratio >= GOAL_RATIO)})"
            )
            print(f"podhook errors: {errors}  (goal: 0: {goal(errors == 0)})")
            print(
                f"podhook worker RSS after the run: max {worst_rss:.1f} MB  "
                f"(goal: <= {GOAL_RSS_MB} MB: {goal(worst_rss <= GOAL_RSS_MB)})"
            )

            # The one INFO in between was the first snapshot's.
            calls = calls_after - calls_before
            calls.pop("info", None)
            # Each delivery queues one job; wrk stops counting answers with some still in flight.
            delivered = max(1, jobs)
            executed = sum(calls.values())
            breakdown = " ".join(f"{name} {n / delivered:.2f}" for name, n in calls.most_common())
            print(
                f"Redis, server side (INFO commandstats around the podhook run, {delivered} "
                "deliveries queued, commands run by Lua scripts included): "
                f"{executed / delivered:.2f} commands per delivery: "
                f"{breakdown}"
            )
            print(
                "Redis total_commands_processed per delivery: "
                f"{(total_after - total_before - 1) / delivered:.2f}"
            )

            app = in_process_app(server.url)
            start = args.envelopes
            bodies = write_envelopes(work / "more.jsonl", args.round_trips + 2, start)
            measured, trips = round_trips(app, bodies)
            per_delivery = print_round_trips(measured, trips)
            print(
                f"round trips per delivery: {per_delivery:.2f}  "
                f"(goal: <= {GOAL_ROUND_TRIPS}: {goal(per_delivery <= GOAL_ROUND_TRIPS)})"
            )
            if args.profile:
                start += args.round_trips + 2
                bodies = write_envelopes(work / "profile.jsonl", args.profile + 1, start)
                profile(app, bodies)
        finally:
            redis.close()
            server.stop()


if __name__ == "__main__":
    main()
