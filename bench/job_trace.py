"""Where a podhook job spends its time, phase by phase, on the real stack.

Starts the integration stack with one host running `app` and --others labeled containers of
other images, `podhook serve`, and `podhook worker` through a bench-side wrapper that times
RQ's and podhook's own functions (wrapped in this process before the worker starts, so the
work-horses RQ forks inherit them; no product code changes). Each call's start and end go to a
trace file as Unix times with the process id. Then:

* --jobs pushes of a new image to `app` (pulled, restarted, watched --settle seconds);
* --jobs pushes of the image `app` already runs (same digest: a job that changes nothing);
* with --preload, the same again with pydbus and GLib imported by the worker before it forks
  (what a work-horse then no longer imports).

Prints, for each kind, the median of each phase in milliseconds: the webhook (end of the push
to the job queued), the wait for the worker (queued to dequeued), RQ in the worker before the
fork, the fork, RQ in the work-horse, the job's setup (settings, desired state, work key,
journal), the Podman listing, the pull, the lock and the listing before the restart, opening
the bus (importing pydbus and GLib, connecting, Subscribe), the restart (RestartUnit until its
job is "done": the container runs), the settle window and the check after it, the report
(saved, counted, the work key released, notified), RQ's end of the job and the worker seeing
the work-horse exit. Also the worker's start-up reconcile of every container, with its
manifest HEADs and image inspects, and the listings the worker's main process makes meanwhile
(it publishes the inventory on Podman's container events).

    .venv/bin/python bench/job_trace.py [--jobs 5] [--others 20] [--settle 2] [--preload]
"""

from __future__ import annotations

import argparse
import builtins
import functools
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

TRACE_ENV = "BENCH_JOB_TRACE"
PRELOAD_ENV = "BENCH_JOB_TRACE_PRELOAD"

# (phase, from mark, to mark): marks are "<label>+" (call) or "<label>-" (return), of the
# work-horse unless they start with "worker:" (the worker's main process).
PHASES = [
    ("webhook: push end → queued", "push", "queued"),
    ("queued → dequeued", "queued", "worker:dequeue-"),
    ("RQ before the fork", "worker:dequeue-", "worker:fork+"),
    ("fork → work-horse runs", "worker:fork+", "horse+"),
    ("RQ in the work-horse", "horse+", "converge+"),
    ("job setup (settings, desired, work key)", "converge+", "list+"),
    ("Podman listing", "list+", "list-"),
    ("decide (image inspect if digest known)", "list-", "pull+|save_report+"),
    ("pull (and image inspect)", "pull+", "pull-"),
    ("lock + listing before restart", "pull-", "bus+"),
    ("bus: import pydbus+GLib, connect", "bus+", "bus-"),
    ("restart until 'done' (running)", "bus-", "restart-"),
    ("settle window + check", "restart-", "verify-"),
    ("report: save, metrics, work key, notify", "verify-|save_report+", "conclude-"),
    ("RQ: result saved, horse exits", "conclude-", "worker:monitor-"),
]


# --------------------------------------------------------------------------------------------
# the traced worker (this file run with --as-worker by the benchmark)


def _mark(label: str) -> None:
    line = f"{time.time():.6f} {os.getpid()} {label}\n".encode()
    os.write(_TRACE_FD, line)


def _wrap(owner: object, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def traced(*args, **kwargs):
        _mark(f"{label}+")
        try:
            return original(*args, **kwargs)
        finally:
            _mark(f"{label}-")

    setattr(owner, name, traced)


def _wrap_imports(modules: set[str]) -> None:
    original = builtins.__import__

    def traced(name, *args, **kwargs):
        if name not in modules or name in sys.modules:
            return original(name, *args, **kwargs)
        _mark(f"import {name}+")
        try:
            return original(name, *args, **kwargs)
        finally:
            _mark(f"import {name}-")

    builtins.__import__ = traced


def run_traced_worker() -> None:
    """`podhook worker` with RQ's and podhook's steps timed into $BENCH_JOB_TRACE."""
    global _TRACE_FD
    _TRACE_FD = os.open(os.environ[TRACE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    if os.environ.get(PRELOAD_ENV):
        import pydbus  # noqa: F401
        from gi.repository import GLib  # noqa: F401
    from rq import Worker

    from webhook.cli import main
    from workers import jobs, metrics, registry_client, update
    from workers.podman_runtime import PodmanRuntime
    from workers.systemd_units import DBusUnitManager

    for name, label in [
        ("dequeue_job_and_maintain_ttl", "worker:dequeue"),
        ("fork_work_horse", "worker:fork"),
        ("monitor_work_horse", "worker:monitor"),
        ("main_work_horse", "horse"),
        ("handle_job_success", "success"),
    ]:
        _wrap(Worker, name, label)
    for name in ("converge", "reconcile", "get_desired", "_save_report", "_conclude"):
        _wrap(jobs, name, name.lstrip("_"))
    _wrap(registry_client, "get_manifest_digest", "head")
    _wrap(metrics, "record_outcomes", "metrics")
    _wrap(PodmanRuntime, "list_autoupdate_containers", "list")
    _wrap(PodmanRuntime, "pull", "pull")
    _wrap(PodmanRuntime, "get_image", "image")
    _wrap(DBusUnitManager, "_connect", "bus")
    _wrap(DBusUnitManager, "restart", "restart")
    _wrap(DBusUnitManager, "get_state", "state")
    _wrap(update.Updater, "_verify", "verify")
    _wrap_imports({"pydbus", "gi.repository"})
    main(["worker"], prog_name="podhook")


_TRACE_FD = -1


# --------------------------------------------------------------------------------------------
# the benchmark


def read_trace(path: Path, offset: int) -> tuple[list[tuple[float, int, str]], int]:
    with open(path, "rb") as file:
        file.seek(offset)
        data = file.read()
    lines = []
    for line in data.decode().splitlines():
        stamp, pid, label = line.split(" ", 2)
        lines.append((float(stamp), int(pid), label))
    return lines, offset + len(data)


def durations(lines: list[tuple[float, int, str]], pid: int, label: str) -> list[float]:
    """How long each call of ``label`` took in process ``pid``."""
    found, entered = [], None
    for stamp, line_pid, line_label in lines:
        if line_pid == pid and line_label == f"{label}+":
            entered = stamp
        elif line_pid == pid and line_label == f"{label}-" and entered is not None:
            found.append(stamp - entered)
            entered = None
    return found


def print_reconcile(lines: list[tuple[float, int, str]]) -> None:
    """The worker's start-up reconcile: its length, and its manifest HEADs and inspects."""
    horse = next((pid for _, pid, label in lines if label == "reconcile+"), None)
    if horse is None:
        return
    [total] = durations(lines, horse, "reconcile") or [float("nan")]
    heads = durations(lines, horse, "head")
    images = durations(lines, horse, "image")
    lists = durations(lines, horse, "list")
    print(
        f"start-up reconcile (every labeled container): {total * 1000:.0f} ms; "
        f"{len(heads)} manifest HEADs, {sum(heads) * 1000:.0f} ms in all "
        f"(median {statistics.median(heads or [0]) * 1000:.0f} ms); "
        f"{len(images)} image inspects, {sum(images) * 1000:.0f} ms; "
        f"{len(lists)} listings, {sum(lists) * 1000:.0f} ms"
    )


def phases_of(
    lines: list[tuple[float, int, str]], worker_pid: int, pushed: float, queued: float
) -> tuple[dict[str, float], dict[str, float]]:
    """The marks of one job (the work-horse that ran converge), and its phases in seconds."""
    horse = next(pid for _, pid, label in lines if label == "converge+" and pid != worker_pid)
    marks: dict[str, float] = {"push": pushed, "queued": queued}
    for stamp, pid, label in lines:
        if pid == horse:
            marks.setdefault(label, stamp)  # the first of each: the job's first listing
        elif pid == worker_pid and label.startswith("worker:"):
            if label == "worker:dequeue-" and stamp <= marks.get("horse+", float("inf")):
                marks[label] = stamp  # the dequeue that gave this job
            else:
                marks.setdefault(label, stamp)
    phases = {}
    for name, start, end in PHASES:
        begin = next((marks[m] for m in start.split("|") if m in marks), None)
        finish = next((marks[m] for m in end.split("|") if m in marks), None)
        if begin is not None and finish is not None:
            phases[name] = finish - begin
    return marks, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs of each kind")
    parser.add_argument("--others", type=int, default=20, help="other labeled containers")
    parser.add_argument("--settle", type=float, default=2.0, help="PODHOOK_SETTLE_SECONDS")
    parser.add_argument("--preload", action="store_true", help="also with pydbus preloaded")
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_worker:
        run_traced_worker()
        return

    from hook_world import HOST, TOKEN, Podhook, exit_on_sigterm, harness

    exit_on_sigterm()

    from workers import audit
    from workers.joblog import get_job

    repository, tag = "bench/app", "1"
    whole = time.monotonic()
    with harness.start_stack() as stack:
        first = stack.build_and_push(repository, tag, marker="v0")
        stack.create_unit_container("app", first.ref)
        for index in range(args.others):
            other = stack.build_and_push(f"bench/other-{index:02d}", "1")
            stack.create_unit_container(f"other-{index:02d}", other.ref)
        trace = stack.root / "job-trace.log"
        podhook = Podhook(stack, args.settle, [sys.executable, __file__, "--as-worker"])
        stack.registry.configure(podhook.url, TOKEN)
        print(
            f"world: 1 host, {args.others + 1} labeled containers, settle {args.settle:g}s; "
            f"ready in {time.monotonic() - whole:.0f}s"
        )
        kinds = [("new image", False, False), ("same digest", True, False)]
        if args.preload:
            kinds += [("new image, preloaded", False, True), ("same digest, preloaded", True, True)]
        results: dict[str, list[dict[str, float]]] = defaultdict(list)
        totals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        local = ""
        for kind, same, preload in kinds:
            env = {TRACE_ENV: str(trace), PRELOAD_ENV: "1" if preload else ""}
            podhook.start_worker(env=env)
            assert podhook.worker is not None
            if not results:
                print_reconcile(read_trace(trace, 0)[0])
            worker_pid = podhook.worker.pid
            for number in range(args.jobs):
                if not same or not local:
                    local = stack.build_image(repository, tag, marker=f"{kind}-{number}")
                offset = trace.stat().st_size if trace.exists() else 0
                pushed_at = time.time()
                digest = stack.push_image(local, repository, tag)
                pushed = time.time()
                job_id = harness.wait_for(
                    lambda d=digest, since=pushed_at: next(
                        (
                            (str(j["job"]), e.data["queued_at"])
                            for e in audit.read(podhook.redis, kind="delivery")
                            if e.data["queued_at"] >= since
                            for j in e.data["jobs"]
                            if j["host"] == HOST and j["digest"] == d
                        ),
                        None,
                    ),
                    60,
                    "the delivery",
                    interval=0.02,
                )
                job_id, queued = job_id
                record = harness.wait_for(
                    lambda j=job_id: (
                        (r := get_job(podhook.redis, j)) and r.state in ("finished", "failed") and r
                    ),
                    120,
                    f"job {job_id}",
                    interval=0.02,
                )
                harness.wait_for(lambda: podhook.idle(), 60, "the worker idle")
                lines, _ = read_trace(trace, offset)
                if record.state != "finished" or record.report is None:
                    raise SystemExit(f"{kind}: job {record.state}: {record.error}")
                states = {r.state.value for r in record.report.rows}
                want = {"unchanged"} if same else {"updated"}
                if states != want:
                    raise SystemExit(f"{kind}: rows {states}, not {want}")
                marks, phases = phases_of(lines, worker_pid, pushed, queued)
                end = marks.get("worker:monitor-", float("inf"))
                meanwhile = [
                    d
                    for stamp, d in zip(
                        [t for t, pid, label in lines if pid == worker_pid and label == "list+"],
                        durations(lines, worker_pid, "list"),
                        strict=False,
                    )
                    if stamp <= end
                ]
                phases["worker listings"] = len(meanwhile)
                phases["worker listings ms"] = sum(meanwhile)
                results[kind].append(phases)
                totals[kind].append(
                    (
                        marks.get("restart-", float("nan")) - pushed,
                        marks.get("worker:monitor-", float("nan")) - pushed,
                    )
                )
            podhook.stop_worker()
        print_table(results, totals, args)
        print(f"whole run {time.monotonic() - whole:.0f}s; 2-core machine shared with others")


def print_table(
    results: dict[str, list[dict[str, float]]],
    totals: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
) -> None:
    kinds = list(results)
    width = max(len(name) for name, _, _ in PHASES)
    print(f"\nmedian milliseconds per phase over {args.jobs} jobs of each kind")
    print(f"{'phase':<{width}} " + " ".join(f"{k:>{max(11, len(k))}}" for k in kinds))
    for name, _, _ in PHASES:
        cells = []
        for kind in kinds:
            values = [p[name] for p in results[kind] if name in p]
            cell = f"{statistics.median(values) * 1000:.0f}" if values else "-"
            cells.append(f"{cell:>{max(11, len(kind))}}")
        print(f"{name:<{width}} " + " ".join(cells))
    cells = []
    for kind in kinds:
        values = [t[1] for t in totals[kind]]
        cells.append(f"{statistics.median(values) * 1000:>{max(11, len(kind))}.0f}")
    print(f"{'push end → worker sees the job end':<{width}} " + " ".join(cells))
    cells = []
    for kind in kinds:
        values = [t[0] for t in totals[kind] if t[0] == t[0]]
        cell = f"{statistics.median(values) * 1000:.0f}" if values else "-"
        cells.append(f"{cell:>{max(11, len(kind))}}")
    print(f"{'push end → restart done (running)':<{width}} " + " ".join(cells))
    cells = []
    for kind in kinds:
        count = statistics.median(p["worker listings"] for p in results[kind])
        spent = statistics.median(p["worker listings ms"] for p in results[kind]) * 1000
        cells.append(f"{f'{count:.0f}: {spent:.0f} ms':>{max(11, len(kind))}}")
    print(f"{'meanwhile: worker inventory listings':<{width}} " + " ".join(cells))


if __name__ == "__main__":
    main()
