"""A failover under a stream of deliveries: real redis-server primary and replica, three real
redis-sentinel processes, the webhook app with PODHOOK_REDIS_WAIT_REPLICAS=1 and a real
`podhook worker`, all through Sentinel.

The primary is SIGKILLed mid-stream; the sentinels promote the replica; the old primary comes
back empty and the sentinels make it the new primary's replica. Every delivery answered 2xx
must have its job and desired state on the new primary; deliveries the app could not confirm
on a replica get 503, never 500; the worker started before the failover works jobs queued
after it, without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    ManagedProcess,
    RedisServer,
    free_port,
    start_process,
    start_redis,
    wait_for,
)
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from webhook.app import create_app
from workers.hosts import get_hosts
from workers.queueing import queue_name

MASTER = "podhook"
HOST = "ha-host"
TOKEN = "sentinel-test-token"
DISTRIBUTION_TYPE = "application/vnd.docker.distribution.events.v1+json"
SENTINEL_BINARY = "redis-sentinel"
# Deliveries acknowledged before the primary is killed, and after its successor has a replica.
BEFORE, AFTER = 15, 10

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which(SENTINEL_BINARY) is None or shutil.which("redis-server") is None,
        reason="redis-sentinel is not installed (scripts/install-deps.sh installs it)",
    ),
]


def start_sentinel(directory: Path, port: int, primary_port: int) -> ManagedProcess:
    """redis-sentinel on 127.0.0.1:<port> watching the primary (quorum 2, down after 1 s)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "sentinel.conf"  # sentinels rewrite their file: one each
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    return start_process(
        [SENTINEL_BINARY, str(config)],
        name=f"sentinel-{port}",
        log_path=directory / "sentinel.log",
        ready_port=port,
    )


def master_port(sentinel_ports: list[int]) -> int:
    """The primary's port as the first sentinel that answers names it."""
    for port in sentinel_ports:
        try:
            with Redis(port=port, socket_timeout=1) as sentinel:
                _host, master = sentinel.sentinel_get_master_addr_by_name(MASTER)
                return int(master)
        except Exception:  # noqa: BLE001 - try the next sentinel
            continue
    raise AssertionError("no sentinel answers")


def has_replica_in_sync(port: int) -> bool:
    with Redis(port=port, socket_timeout=1) as redis:
        info = redis.info("replication")
    return info["role"] == "master" and any(
        isinstance(value, dict) and value.get("state") == "online"
        for key, value in info.items()
        if key.startswith("slave")
    )


def host_registered(port: int) -> bool:
    with Redis(port=port) as redis:
        return HOST in get_hosts(redis)


def delivery(number: int) -> bytes:
    """A manifest push of its own repository, so that each delivery queues its own job."""
    digest = "sha256:" + f"{number:064x}"
    repository = f"ha/app-{number}"
    return json.dumps(
        {
            "events": [
                {
                    "id": f"delivery-{number}",
                    "timestamp": "2026-11-29T09:00:00Z",
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": digest,
                        "size": 528,
                        "repository": repository,
                        "tag": "1.0",
                        "url": f"http://127.0.0.1:5000/v2/{repository}/manifests/{digest}",
                    },
                    "request": {"id": "r", "addr": "a", "host": "127.0.0.1:5000", "method": "PUT"},
                    "actor": {},
                    "source": {"addr": "registry:5000"},
                }
            ]
        }
    ).encode()


@dataclass
class Answer:
    number: int
    started: float
    ended: float
    status: int
    body: dict

    @property
    def reference(self) -> str:
        return f"127.0.0.1:5000/ha/app-{self.number}:1.0"

    @property
    def digest(self) -> str:
        return "sha256:" + f"{self.number:064x}"


class DeliveryStream:
    """Sends deliveries one after another from a thread, as a registry would, and keeps every
    answer."""

    def __init__(self, client) -> None:
        self.client = client
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="deliveries", daemon=True)

    def _run(self) -> None:
        number = 0
        headers = {"Content-Type": DISTRIBUTION_TYPE, "Authorization": f"Bearer {TOKEN}"}
        while not self.stopping.is_set():
            started = time.monotonic()
            response = self.client.post(
                "/v1/webhooks/distribution", data=delivery(number), headers=headers
            )
            answer = Answer(
                number, started, time.monotonic(), response.status_code, response.json or {}
            )
            with self.lock:
                self.answers.append(answer)
            number += 1

    def snapshot(self) -> list[Answer]:
        with self.lock:
            return list(self.answers)

    def acknowledged_since(self, moment: float) -> int:
        return sum(1 for a in self.snapshot() if a.started >= moment and 200 <= a.status < 300)

    def stop(self) -> list[Answer]:
        self.stopping.set()
        self.thread.join(timeout=60)
        return self.snapshot()


@dataclass
class Cluster:
    directory: Path
    primary: RedisServer
    replica: RedisServer
    sentinel_ports: list[int]
    sentinels: list[ManagedProcess]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path,
        start_redis(tmp_path / "primary", port=free_port()),
        start_redis(tmp_path / "replica", port=free_port()),
        [free_port() for _ in range(3)],
        [],
    )
    try:
        with Redis(port=cluster.replica.port) as client:
            client.replicaof("127.0.0.1", cluster.primary.port)
        wait_for(lambda: has_replica_in_sync(cluster.primary.port), 20, "the replica in sync")
        for index, port in enumerate(cluster.sentinel_ports):
            cluster.sentinels.append(
                start_sentinel(tmp_path / f"sentinel-{index}", port, cluster.primary.port)
            )

        def sentinels_agree() -> bool:
            # Each knows the two others and the replica: a failover can be voted and done.
            for port in cluster.sentinel_ports:
                with Redis(port=port, socket_timeout=1) as sentinel:
                    if len(sentinel.sentinel_sentinels(MASTER)) != 2:
                        return False
                    if len(sentinel.sentinel_slaves(MASTER)) != 1:
                        return False
            return True

        wait_for(sentinels_agree, 30, "three sentinels that know each other and the replica")
        yield cluster
    finally:
        for process in cluster.sentinels:
            process.stop(grace=5)
        cluster.replica.stop()
        cluster.primary.stop()  # the old primary restarted by the test, if it was


def test_nothing_acknowledged_is_lost_in_a_failover(cluster: Cluster, tmp_path: Path) -> None:
    sentinels = ",".join(f"127.0.0.1:{port}" for port in cluster.sentinel_ports)
    settings = {
        "redis_sentinels": sentinels,
        "redis_master_name": MASTER,
        "redis_wait_replicas": 1,
        "redis_wait_timeout": 0.5,
        "webhook_token": TOKEN,
        "job_retries": 0,
    }
    worker_env = {
        "PODHOOK_REDIS_SENTINELS": sentinels,
        "PODHOOK_REDIS_MASTER_NAME": MASTER,
        "PODHOOK_HOST_ID": HOST,
        # No Podman (nor systemd) here: each converge job fails fast, having run.
        "PODHOOK_PODMAN_URL": f"unix://{tmp_path}/no-podman.sock",
        "PODHOOK_RECONCILE_INTERVAL": "0",
        "PODHOOK_JOB_RETRIES": "0",
    }
    worker = start_process(
        [str(Path(sys.executable).parent / "podhook"), "worker"],
        worker_env,
        name="worker",
        log_path=tmp_path / "worker.log",
        ready=lambda: host_registered(cluster.primary.port),
    )
    stream = DeliveryStream(create_app(**settings).test_client())
    try:
        with Redis(port=cluster.primary.port) as before:
            [worker_name] = [
                key.decode().removeprefix("rq:worker:")
                for key in before.smembers("rq:workers")
                if queue_name(HOST).encode() in (before.hget(key, "queues") or b"")
            ]
        stream.thread.start()
        wait_for(lambda: stream.acknowledged_since(0) >= BEFORE, 30, f"{BEFORE} acknowledged")

        killed_at = time.monotonic()
        os.killpg(cluster.primary.process.pid, signal.SIGKILL)
        cluster.primary.process.popen.wait(5)
        wait_for(
            lambda: master_port(cluster.sentinel_ports) == cluster.replica.port,
            30,
            "the sentinels to promote the replica",
        )
        failover_seconds = time.monotonic() - killed_at
        # Until the old primary is back, no replica can acknowledge: let at least one delivery
        # run wholly in that window before bringing it back.
        wait_for(
            lambda: any(a.started >= killed_at for a in stream.snapshot()),
            30,
            "a delivery made during the failover",
        )
        rejoining_at = time.monotonic()
        old_primary = start_redis(cluster.directory / "primary-again", port=cluster.primary.port)
        cluster.primary = old_primary  # stopped by the fixture
        wait_for(
            lambda: has_replica_in_sync(cluster.replica.port),
            60,
            "the old primary to rejoin as the new primary's replica",
        )
        rejoined_at = time.monotonic()
        wait_for(
            lambda: stream.acknowledged_since(rejoined_at) >= AFTER,
            60,
            f"{AFTER} acknowledged after the failover",
        )
        answers = stream.stop()
        assert worker.alive(), worker.log_text()

        new_primary = Redis(port=master_port(cluster.sentinel_ports))
        assert new_primary.info("replication")["role"] == "master"
        assert new_primary.connection_pool.connection_kwargs["port"] == cluster.replica.port

        statuses = {a.status for a in answers}
        assert statuses <= {202, 503}, sorted(statuses)
        acknowledged = [a for a in answers if a.status == 202]
        refused = [a for a in answers if a.status == 503]
        # Every delivery that ran wholly while there was no replica to acknowledge was refused.
        in_window = [a for a in answers if a.started >= killed_at and a.ended <= rejoining_at]
        assert in_window and all(a.status == 503 for a in in_window)

        lost = []
        for answer in acknowledged:
            [job_id] = answer.body["queued"]
            desired = new_primary.hget(f"podhook:desired:{answer.reference}", "digest")
            if not new_primary.exists(f"rq:job:{job_id}") or desired != answer.digest.encode():
                lost.append(answer.number)
        assert lost == []

        # The worker started before the failover works the jobs queued after it.
        after = [a for a in acknowledged if a.started >= rejoined_at]
        after_ids = [a.body["queued"][0] for a in after]

        def worked() -> bool:
            states = [new_primary.hget(f"rq:job:{job_id}", "status") for job_id in after_ids]
            return all(state in (b"finished", b"failed") for state in states)

        wait_for(worked, 60, "the worker to work the jobs queued after the failover")
        assert worker.alive(), worker.log_text()
        # ... running podhook's converge, which saved its report of each on the new primary
        # (with neither Podman nor systemd here, a report that it could not reach them).
        for answer, job_id in zip(after, after_ids, strict=True):
            job = Job.fetch(job_id, connection=new_primary, serializer=JSONSerializer)
            report = job.meta.get("report") or {}
            assert report.get("reference") == answer.reference and report.get("error"), report
        # ... the very worker registered before it: its RQ record on the new primary counts them.
        record = new_primary.hgetall(f"rq:worker:{worker_name}")
        worked_jobs = int(record.get(b"failed_job_count", 0)) + int(
            record.get(b"successful_job_count", 0)
        )
        assert worked_jobs >= len(after_ids) > 0

        print(
            f"\nsentinel failover: {len(answers)} deliveries, {len(acknowledged)} acknowledged "
            f"(2xx), {len(lost)} of them lost, {len(refused)} answered 503 "
            f"({len(in_window)} made wholly without a replica), none 500; failover (kill to "
            f"promotion seen) {failover_seconds:.1f} s; old primary back as replica "
            f"{rejoined_at - rejoining_at:.1f} s after its restart; worker {worker_name} "
            f"(pid {worker.pid}) worked {len(after_ids)} jobs queued after the failover"
        )
    finally:
        stream.stopping.set()
        worker.stop()
