"""Worker hosts: their heartbeats, whether they are stale, and forgetting one for good."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from redis import Redis

from workers import inventory
from workers.queueing import get_queue, work_key_pattern
from workers.settings import Settings

HOSTS_KEY = "podhook:hosts"
# Each host's labels (PODHOOK_HOST_LABELS) as JSON: rollouts choose their waves' hosts by them.
HOST_LABELS_KEY = "podhook:host-labels"
# Workers beat about every 45 s (workers/worker.py); a host that missed a few beats is stale.
DEFAULT_STALE_AFTER_SECONDS = Settings.host_stale_after


def register_host(
    redis: Redis,
    host: str,
    now: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Record that a worker of ``host`` is alive now, with its ``labels``; pushes from then on
    may reach its queue.

    A host seen for the first time has no inventory yet: it is marked as such, so pushes reach
    it until it publishes one (workers/routing.py).
    """
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(HOSTS_KEY, {host: time.time() if now is None else now})
    pipe.zadd(inventory.INVENTORY_AT_KEY, {host: 0}, nx=True)
    if labels is not None:
        pipe.hset(HOST_LABELS_KEY, host, json.dumps(dict(labels), sort_keys=True))
    pipe.execute()


def get_host_labels(redis: Redis) -> dict[str, dict[str, str]]:
    """Every host's labels as its workers last registered them."""
    raw: dict[bytes, bytes] = redis.hgetall(HOST_LABELS_KEY)  # type: ignore[assignment]
    return {host.decode(): json.loads(value) for host, value in raw.items()}


def get_hosts(redis: Redis) -> dict[str, float]:
    """Every registered host with the time of its last heartbeat."""
    entries: list[tuple[bytes, float]] = redis.zrange(  # type: ignore[assignment]
        HOSTS_KEY, 0, -1, withscores=True
    )
    return {host.decode(): score for host, score in entries}


def is_stale(last_heartbeat: float, stale_after: float, now: float | None = None) -> bool:
    """Whether a host whose workers last beat at ``last_heartbeat`` is stale."""
    return (time.time() if now is None else now) - last_heartbeat > stale_after


def forget_host(redis: Redis, host: str) -> bool:
    """Remove ``host`` from the fleet: its registration, inventory, queue and queued jobs, and
    its pending convergence work. Returns whether it was registered.

    Workers of the host that still run register it again at their next heartbeat.
    """
    known = redis.zscore(HOSTS_KEY, host) is not None
    queue = get_queue(redis, host)
    for registry in (
        queue.scheduled_job_registry,
        queue.deferred_job_registry,
        queue.failed_job_registry,
        queue.finished_job_registry,
    ):
        for job_id in registry.get_job_ids():
            registry.remove(job_id, delete_job=True)
    queue.delete(delete_jobs=True)
    inventory.drop_inventory(redis, host)
    for key in redis.scan_iter(match=work_key_pattern(host), count=500):
        redis.delete(key)
    redis.zrem(HOSTS_KEY, host)
    redis.hdel(HOST_LABELS_KEY, host)
    return known
