"""Self-update on the real stack: a worker that runs in the very container it must update.

The worker runs inside a labeled container under its own `--new` unit (the image is the
harness's busybox with the host's /usr and this checkout mounted, so the podhook inside is
this one). A push of its image cannot be restarted from inside: the job hands the restart to
a transient unit, the unit comes back on the new image, and the new worker completes the
job's record.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from workers.events import make_event
from workers.handoff import HANDOFF_KEY
from workers.hosts import forget_host, get_hosts
from workers.locks import RedisUnitLocks
from workers.routing import dispatch_push

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
PODHOOK = str(Path(sys.executable).parent / "podhook")
HOST_ID = "self-host"
NAME = "podhook-self"


def worker_container_args(stack: Any) -> list[str]:
    """Run this checkout's `podhook worker` in a busybox container: the host's Python (/usr,
    /lib and the venv's base), the checkout with its venv, and the stack's sockets, at the
    same paths."""
    mounts = ["/usr", "/lib", str(PROJECT), str(stack.root)]
    if not sys.base_prefix.startswith("/usr"):
        mounts.append(sys.base_prefix)  # the venv's Python lives elsewhere (pyenv, /opt)
    if Path("/lib64").is_dir():
        mounts.append("/lib64")
    args = [arg for path in mounts for arg in ("-v", f"{path}:{path}")]
    env = {
        **{k: v for k, v in stack.env.items() if k.startswith(("PODHOOK_", "XDG_", "DBUS_"))},
        "PATH": "/usr/bin:/bin",
        "PODHOOK_HOST_ID": HOST_ID,
        "PODHOOK_SETTLE_SECONDS": "2",
        "PODHOOK_STATE_DIR": str(stack.root / "self-state"),
        "PODHOOK_RECONCILE_INTERVAL": "0",
    }
    args += [arg for key, value in sorted(env.items()) for arg in ("-e", f"{key}={value}")]
    return args


def test_a_worker_updates_its_own_unit_and_completes_the_record(stack, units):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    command = [PODHOOK, "worker"]
    v1 = stack.build_and_push("selfupdate/worker", "1", marker="worker-v1", command=command)
    unit = units.container(NAME, v1.ref, extra_args=worker_container_args(stack), stop_timeout=60)
    try:
        from harness import HarnessError, wait_for

        try:
            wait_for(lambda: HOST_ID in get_hosts(redis), 60, "the containerized worker")
        except HarnessError:
            pytest.fail(f"the worker in {unit} did not start:\n{stack.podman('logs', NAME)}")
        v2 = stack.build_and_push("selfupdate/worker", "1", marker="worker-v2", command=command)
        started = time.monotonic()
        registry_host, _, _ = v1.ref.partition("/")
        [queued] = dispatch_push(
            redis, make_event(registry_host, "selfupdate/worker", "1", v2.digest)
        )

        def report() -> dict[str, Any]:
            job = Job.fetch(queued.job_id, connection=redis, serializer=JSONSerializer)
            return dict(job.meta.get("report") or {})

        def completed() -> bool:
            rows = report().get("containers", [])
            return bool(rows) and all(row["state"] != "handed_off" for row in rows)

        try:
            wait_for(completed, 120, "the job's record completed by the new worker", interval=0.5)
        except HarnessError:
            pytest.fail(
                f"record: {json.dumps(report(), indent=1)}\n"
                f"unit: {stack.unit_state(unit)}\nlogs:\n{stack.podman('logs', NAME, check=False)}"
            )
        print(f"\nself-update complete {time.monotonic() - started:.2f}s after the push")

        final = report()
        [row] = [r for r in final["containers"] if r["container_name"] == NAME]
        assert row["state"] == "updated", row
        assert final["handoff"]["units"] == [unit]
        assert final["handoff"]["transient_unit"] in row["reason"]
        assert stack.container_info(NAME)["image_digest"] == v2.digest
        assert stack.podman("exec", NAME, "cat", "/version").strip() == "worker-v2"
        assert stack.unit_state(unit) == "active"
        assert redis.hlen(HANDOFF_KEY.format(host=HOST_ID)) == 0
        assert not redis.exists(RedisUnitLocks(redis, HOST_ID).key(unit))  # lock released
        job = Job.fetch(queued.job_id, connection=redis, serializer=JSONSerializer)
        assert job.get_status() == "finished"
    finally:
        forget_host(redis, HOST_ID)


def test_a_worker_image_that_does_not_come_up_is_rolled_back_and_the_job_failed(stack, units):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    v1 = stack.build_and_push(
        "selfupdate/broken", "1", marker="worker-v1", command=[PODHOOK, "worker"]
    )
    unit = units.container(NAME, v1.ref, extra_args=worker_container_args(stack), stop_timeout=60)
    try:
        from harness import HarnessError, wait_for

        wait_for(lambda: HOST_ID in get_hosts(redis), 60, "the containerized worker")
        old_image = stack.container_info(NAME)["image_id"]
        bad = stack.build_and_push(
            "selfupdate/broken", "1", marker="worker-bad", command=["/bin/sh", "-c", "exit 3"]
        )
        registry_host, _, _ = v1.ref.partition("/")
        [queued] = dispatch_push(
            redis, make_event(registry_host, "selfupdate/broken", "1", bad.digest)
        )

        def job() -> Job:
            return Job.fetch(queued.job_id, connection=redis, serializer=JSONSerializer)

        try:
            wait_for(lambda: job().get_status() == "failed", 180, "the job failed", interval=0.5)
        except HarnessError:
            transient = stack.systemctl("status", "--all", "podhook-handoff-*", check=False)
            pytest.fail(
                f"record: {json.dumps(job().meta.get('report'), indent=1)}\n"
                f"{unit}: {stack.unit_state(unit)}\n{transient}"
            )
        [row] = [r for r in job().meta["report"]["containers"] if r["container_name"] == NAME]
        assert row["state"] == "rolled_back", row
        assert "did not stay up on the new image" in row["reason"]
        stack.wait_unit(unit, "active", 60)
        assert stack.container_info(NAME)["image_id"] == old_image
        assert stack.podman("exec", NAME, "cat", "/version").strip() == "worker-v1"
        assert stack.image_info(v1.ref)["Id"] == old_image  # the tag is back on the old image
        assert redis.hlen(HANDOFF_KEY.format(host=HOST_ID)) == 0
    finally:
        forget_host(redis, HOST_ID)
