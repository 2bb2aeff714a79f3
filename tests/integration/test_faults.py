"""Faults on the real stack: a work-horse or a whole worker SIGKILLed mid-update, the Podman
service down during a job, Redis SIGKILLed and restarted with its append-only file. Each ends
converged, with one restart per digest, and nothing queued lost or run twice.

Each test has a host of its own, forgotten at the end, and repositories under ``faults/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    HarnessError,
    free_port,
    start_podman_service,
    start_redis,
    wait_for,
)
from podhook_support import outcomes, push, rows_for, start_worker
from redis import Redis

from workers.attempts import ATTEMPTS_KEY
from workers.events import make_event
from workers.hosts import forget_host, register_host
from workers.queueing import request_convergence
from workers.routing import dispatch_push

pytestmark = pytest.mark.integration

# Runs for two seconds, then fails: every start of its unit ends in a crash loop.
CRASHES_AFTER_TWO_SECONDS = ("/bin/sh", "-c", "sleep 2; echo 'this release crashes'; exit 1")


def children(pid: int) -> set[int]:
    """The child processes of ``pid``."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def phase_of(redis: Redis, host: str, unit: str) -> str | None:
    """The phase the journal records for an update of ``unit`` in progress, if any."""
    raw = redis.hget(ATTEMPTS_KEY.format(host=host), unit)
    return json.loads(raw)["phase"] if raw else None


def starts_of(stack: Any, name: str, since: float) -> int:
    """How many times a container named ``name`` started since ``since`` (Podman's events),
    once its events are there to read (their log may lag a moment behind)."""
    try:
        wait_for(lambda: _starts(stack, name, since) > 0, 10, f"{name}'s start events", 0.5)
    except HarnessError:
        return 0
    return _starts(stack, name, since)


def _starts(stack: Any, name: str, since: float) -> int:
    out = stack.podman(
        "events",
        "--since",
        str(int(since)),
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        f"container={name}",
        "--filter",
        "event=start",
        "--format",
        "{{.Name}}",
    )
    return len([line for line in out.splitlines() if line.strip() == name])


def on_image(stack: Any, name: str, image_id: str) -> bool:
    try:
        return stack.container_info(name)["image_id"] == image_id
    except HarnessError:
        return False  # between a unit's stop and its start


def test_a_work_horse_killed_while_restarting_a_good_image_converges_with_one_restart(
    stack, units, spawn
):
    host = "faults-horse"
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    v1 = stack.build_and_push("faults/horse", "1", marker="horse-v1")
    unit = units.container("fhorse", v1.ref, stop_timeout=3)
    worker = start_worker(spawn, redis, host, reconcile_interval="0")
    try:
        v2 = stack.build_and_push("faults/horse", "1", marker="horse-v2")
        pushed_at = time.time()
        push(redis, v2)
        wait_for(lambda: phase_of(redis, host, unit) == "restarting", 60, "the restart", 0.02)
        # The work-horse: the worker's child in a process group of its own (RQ's setpgrp).
        [horse] = [pid for pid in children(worker.pid) if os.getpgid(pid) == pid]
        os.kill(horse, signal.SIGKILL)
        killed_at = time.monotonic()

        def converged() -> bool:
            updated = [r for r in rows_for(redis, "fhorse") if r["state"] == "updated"]
            return bool(updated) and phase_of(redis, host, unit) is None

        try:
            wait_for(converged, 120, "fhorse updated by the retry", interval=0.5)
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'fhorse')}\n{worker.log_text()}")
        print(f"\nconverged {time.monotonic() - killed_at:.1f}s after the work-horse was killed")
        stack.wait_unit(unit, "active", 30)
        v2_image = stack.image_info(v2.ref)["Id"]
        assert on_image(stack, "fhorse", v2_image)
        assert not [r for r in rows_for(redis, "fhorse") if r["state"] == "rolled_back"]
        assert starts_of(stack, "fhorse", pushed_at) == 1  # one restart for the digest
    finally:
        worker.stop()
        forget_host(redis, host)


def test_a_worker_killed_in_the_verify_window_of_a_bad_image_is_rolled_back_by_the_next(
    stack, units, spawn
):
    host = "faults-verify"
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    v1 = stack.build_and_push("faults/verify", "1", marker="verify-v1")
    unit = units.container("fverify", v1.ref)
    v1_image = stack.container_info("fverify")["image_id"]
    worker = start_worker(spawn, redis, host, settle_seconds="6", reconcile_interval="0")
    bad = stack.build_and_push(
        "faults/verify", "1", marker="verify-bad", command=CRASHES_AFTER_TWO_SECONDS
    )
    push(redis, bad)
    wait_for(lambda: phase_of(redis, host, unit) == "verifying", 60, "the verify window", 0.02)
    time.sleep(1.5)
    for child in children(worker.pid):  # the work-horse is in a process group of its own
        os.kill(child, signal.SIGKILL)
    worker.stop(sig=signal.SIGKILL)  # the worker and its work-horse, 1.5 s into the window
    killed_at = time.monotonic()
    try:
        # The unit crash-loops on the bad image meanwhile; the next worker's attempt (the
        # reconcile it runs at start) finds the journal's record and rolls it back.
        second = start_worker(spawn, redis, host, settle_seconds="3", reconcile_interval="3600")

        def rolled_back() -> bool:
            return any(r["state"] == "rolled_back" for r in rows_for(redis, "fverify"))

        try:
            wait_for(rolled_back, 120, "fverify rolled back", interval=0.5)
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'fverify')}\n{second.log_text()}")
        print(f"\nrolled back {time.monotonic() - killed_at:.1f}s after the worker was killed")
        [row] = [r for r in rows_for(redis, "fverify") if r["state"] == "rolled_back"]
        assert "cut short while verifying" in row["reason"]
        stack.wait_unit(unit, "active", 60)
        assert on_image(stack, "fverify", v1_image)
        assert stack.image_info(v1.ref)["Id"] == v1_image  # the tag is back on v1
        assert phase_of(redis, host, unit) is None
        assert not [r for r in rows_for(redis, "fverify") if r["state"] == "unchanged"]
    finally:
        forget_host(redis, host)


def test_the_podman_service_down_for_20_seconds_during_a_job_is_waited_out(stack, units, spawn):
    host = "faults-podman"
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    v1 = stack.build_and_push("faults/podman", "1", marker="podman-v1")
    unit = units.container("fpodman", v1.ref)
    worker = start_worker(spawn, redis, host, reconcile_interval="0")
    try:
        v2 = stack.build_and_push("faults/podman", "1", marker="podman-v2")
        pushed_at = time.time()
        push(redis, v2)
        wait_for(lambda: phase_of(redis, host, unit) == "verifying", 60, "the restart", 0.02)
        service = stack.podman_service
        service.stop()
        time.sleep(20)
        stack.podman_service = start_podman_service(
            service.socket_path, stack.podman_env, stack.root / "podman-service-2.log"
        )

        def updated() -> bool:
            return any(r["state"] == "updated" for r in rows_for(redis, "fpodman"))

        try:
            wait_for(updated, 120, "fpodman updated", interval=0.5)
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'fpodman')}\n{worker.log_text()}")
        states = [r["state"] for r in rows_for(redis, "fpodman")]
        assert "rolled_back" not in states, states  # a silence is not a failed restart
        assert on_image(stack, "fpodman", stack.image_info(v2.ref)["Id"])
        assert starts_of(stack, "fpodman", pushed_at) == 1
        assert phase_of(redis, host, unit) is None
    finally:
        worker.stop()
        forget_host(redis, host)


def test_redis_killed_and_restarted_with_aof_runs_every_queued_job_once(stack, spawn):
    host = "faults-redis"
    port = free_port()
    directory = stack.root / "redis-aof"
    server = start_redis(directory, port, aof=True)
    url = f"redis://127.0.0.1:{port}/0"
    redis = Redis.from_url(url)
    images = [
        make_event("registry.faults.invalid", f"faults/nothing-{i}", "1", f"sha256:{i:064x}")
        for i in range(5)
    ]
    try:
        register_host(redis, host)
        queued = [dispatch_push(redis, event)[0].job_id for event in images]  # no worker yet
        server.process.stop(sig=signal.SIGKILL)
        server = start_redis(directory, port, aof=True)  # the same files: the AOF replayed

        worker = start_worker(spawn, redis, host, redis_url=url, reconcile_interval="0")
        wait_for(
            lambda: all(j in {e.get("job") for e in outcomes(redis)} for j in queued),
            60,
            "every queued job run",
            interval=0.5,
        )
        runs = [e.get("job") for e in outcomes(redis)]
        assert sorted(j for j in runs if j in queued) == sorted(queued)  # each exactly once

        # Redis killed and back while the worker idles: it carries on without a restart.
        server.process.stop(sig=signal.SIGKILL)
        time.sleep(3)
        server = start_redis(directory, port, aof=True)
        after = request_convergence(redis, host, "registry.faults.invalid/faults/after:1").job_id
        try:
            wait_for(
                lambda: after in {e.get("job") for e in outcomes(redis)},
                90,
                "a job queued after Redis came back",
                interval=0.5,
            )
        except HarnessError:
            pytest.fail(f"the worker did not carry on:\n{worker.log_text()}")
        assert worker.alive()
    finally:
        worker_stop = locals().get("worker")
        if worker_stop is not None:
            worker_stop.stop()
        server.process.stop()
        subprocess.run(["rm", "-rf", str(directory)], check=False)
