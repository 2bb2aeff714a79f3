"""Several worker processes on one host, several pushes at once: no unit restarts twice at once.

Two pushes concern the two containers of one kube unit; three workers take them at the same
time. systemd's RestartUnit(..., "replace") would cancel the first restart if the second came
while it ran, failing that job: both ending `updated` shows the per-unit lock serialized them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from workers.events import make_event
from workers.hosts import forget_host, get_hosts
from workers.joblog import get_job
from workers.queueing import JobOptions, get_queue
from workers.routing import dispatch_push

pytestmark = pytest.mark.integration

HOST_ID = "pool-host"


@pytest.fixture
def pool(stack: Any) -> Any:
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    podhook_bin = str(Path(sys.executable).parent / "podhook")
    env = {"PODHOOK_HOST_ID": HOST_ID, "PODHOOK_SETTLE_SECONDS": "2", "PODHOOK_JOB_RETRIES": "0"}
    queue = get_queue(redis, HOST_ID)
    process = stack.start_process(
        [podhook_bin, "worker", "--processes", "3"],
        env=env,
        name="worker-pool",
        ready=lambda: Worker.count(connection=redis, queue=queue) == 3,
    )
    yield redis
    process.stop()
    forget_host(redis, HOST_ID)  # later tests must not queue pushes for this host


def test_pool_serializes_restarts_of_one_unit(stack, pool, units):
    redis = pool
    assert HOST_ID in get_hosts(redis)
    a = stack.build_and_push("pool/a", "1", marker="a-v1")
    b = stack.build_and_push("pool/b", "1", marker="b-v1")
    # One kube unit whose pod runs two containers of two different images.
    duo_unit = units.kube("duo", {"a": a.ref, "b": b.ref})
    c1 = stack.build_and_push("pool/c", "1", marker="c-v1")
    solo_units = [units.container(name, c1.ref) for name in ("solo1", "solo2")]

    pushed = [
        stack.build_and_push(repository, "1", marker=f"{repository}-v2")
        for repository in ("pool/a", "pool/b", "pool/c")
    ]
    job_ids = []
    for image in pushed:
        event = make_event(stack.registry.host, image.repository, image.tag, image.digest)
        job_ids += [
            q.job_id
            for q in dispatch_push(redis, event, JobOptions(retries=0))
            if q.host == HOST_ID
        ]

    deadline = time.monotonic() + 120
    records = []
    while time.monotonic() < deadline:
        records = [get_job(redis, job_id) for job_id in job_ids]
        if all(r is not None and r.state in ("finished", "failed") for r in records):
            break
        time.sleep(0.2)
    states = {r.event["repository"]: (r.state, r.error) for r in records}
    assert all(state == "finished" for state, _ in states.values()), states

    rows = {row.container_name: row for r in records for row in r.report.rows}
    assert set(rows) == {"duo-a", "duo-b", "solo1", "solo2"}
    assert {rows[name].state for name in ("solo1", "solo2")} == {"updated"}
    # The second push of the duo unit waits for the first one's restart; `podman kube play`
    # may have pulled its image by then, so it may find that container already up to date.
    duo_states = sorted(rows[name].state.value for name in ("duo-a", "duo-b"))
    assert duo_states in (["updated", "updated"], ["unchanged", "updated"]), rows
    assert rows["duo-a"].unit == rows["duo-b"].unit == duo_unit
    assert {rows["solo1"].unit, rows["solo2"].unit} == set(solo_units)

    jobs = Job.fetch_many(job_ids, connection=redis, serializer=JSONSerializer)
    duo_jobs = [job for job in jobs if job.meta["event"]["repository"] in ("pool/a", "pool/b")]
    assert len({job.worker_name for job in jobs}) >= 2, "the pushes were not worked in parallel"
    first, second = sorted(duo_jobs, key=lambda job: job.started_at)
    assert second.started_at < first.ended_at, "the two pushes of one unit did not overlap"

    stack.wait_unit(duo_unit, "active", 30)
    for name, image in (("duo-a", pushed[0]), ("duo-b", pushed[1])):
        assert stack.container_info(name)["image_digest"] == image.digest
    for name in ("solo1", "solo2"):
        assert stack.container_info(name)["image_digest"] == pushed[2].digest
