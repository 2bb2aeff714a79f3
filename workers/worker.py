"""Run RQ workers for this host's queue, registering the host in the fleet as they beat."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from typing import Any

from rq import Worker
from rq.serializers import JSONSerializer

from workers.inventory import collect_inventory, publish_inventory
from workers.logs import setup_logging
from workers.podman_runtime import PodmanRuntime
from workers.queueing import get_queue, redis_from_settings, register_host
from workers.settings import Settings

log = logging.getLogger("podhook.worker")

# The worker's heartbeat, and so the host's, comes about every WORKER_TTL - 15 seconds.
WORKER_TTL = 60


class HostWorker(Worker):
    """An RQ worker whose heartbeat also tells the fleet that its host is alive."""

    def __init__(self, *args: Any, host_id: str, podman_url: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.host_id = host_id
        self.podman_url = podman_url

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, plus the host's entry in the fleet and its container inventory."""
        super().heartbeat(timeout, pipeline)
        register_host(self.connection, self.host_id)
        if self.podman_url and self.get_state() != "busy":
            runtime = PodmanRuntime(self.podman_url, timeout=10)
            try:
                publish_inventory(self.connection, self.host_id, collect_inventory(runtime))
            finally:
                runtime.close()


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Work this host's queue until stopped (or, with ``burst``, until it is empty).

    Registers the host first, so pushes queued from now on reach it. Returns whether any job
    was worked. Raises redis.RedisError when Redis is unreachable.
    """
    setup_logging(settings)  # pool workers are fresh (spawned) processes
    redis = redis_from_settings(settings)
    register_host(redis, settings.host_id)
    worker = HostWorker(
        [get_queue(redis, settings.host_id)],
        connection=redis,
        serializer=JSONSerializer,
        host_id=settings.host_id,
        podman_url=settings.podman_url,
        worker_ttl=WORKER_TTL,
    )
    log.info("worker for host=%s on queue %s", settings.host_id, worker.queue_names()[0])
    return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))


def run_pool(settings: Settings, processes: int, *, burst: bool = False) -> None:
    """Run ``processes`` workers for this host side by side and wait for them all.

    Every worker takes jobs from the same host queue; the per-unit lock keeps two of them from
    restarting one unit at once. SIGTERM is passed on to the workers, which finish their
    current job first (RQ's warm shutdown); Ctrl-C reaches them from the terminal directly.
    """
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=run_worker, args=(settings,), kwargs={"burst": burst})
        for _ in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    # A second SIGINT would turn the workers' warm shutdown into a cold one: the terminal
    # already sends Ctrl-C to every process of the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for child in children:
        child.join()
