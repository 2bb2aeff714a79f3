"""The fleet in Redis: registered hosts, their queues, and queuing one job per host for a push."""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from workers.events import PushEvent

HOSTS_KEY = "podhook:hosts"
DELIVERIES_KEY = "podhook:delivery:{endpoint}:{delivery}"
RECENT_KEY = "podhook:recent:{host}:{reference}"
JOB_FUNCTION = "workers.jobs.apply_push"

# A digest-less push (Docker Hub, Quay, ...) waits this long before it runs, so that the
# several deliveries senders make of one push coalesce into one job per host and reference.
DIGESTLESS_DELAY_SECONDS = 10
# How long the coalescing key outlives the delay (it only matters while the job waits).
DIGESTLESS_WINDOW_SECONDS = 60
# GitHub redelivers by hand for up to three days; remember delivery ids that long.
DELIVERY_MEMORY_SECONDS = 3 * 24 * 3600
# Backoff between attempts of a job that failed for a passing reason (registry or Podman down).
RETRY_INTERVALS = [10, 30, 90]
JOB_TIMEOUT_SECONDS = 900


class NoHostsError(RuntimeError):
    """Raised when no worker host has registered, so a push would reach nobody."""


@dataclass(frozen=True)
class QueuedJob:
    """One host's job for a push; ``duplicate`` when an identical job already existed."""

    host: str
    job_id: str
    duplicate: bool


def queue_name(host: str) -> str:
    """The RQ queue a host's workers listen on."""
    return f"podhook-{host}"


def get_queue(redis: Redis, host: str) -> Queue:
    """The RQ queue of a host, with podhook's JSON serializer."""
    return Queue(queue_name(host), connection=redis, serializer=JSONSerializer)


def register_host(redis: Redis, host: str, now: float | None = None) -> None:
    """Record that a worker of ``host`` is alive now; pushes from then on reach its queue."""
    redis.zadd(HOSTS_KEY, {host: time.time() if now is None else now})


def forget_host(redis: Redis, host: str) -> bool:
    """Stop queuing pushes for ``host``. Returns whether it was registered."""
    return bool(redis.zrem(HOSTS_KEY, host))


def get_hosts(redis: Redis) -> dict[str, float]:
    """Every registered host with the time of its last heartbeat."""
    entries: list[tuple[bytes, float]] = redis.zrange(  # type: ignore[assignment]
        HOSTS_KEY, 0, -1, withscores=True
    )
    return {host.decode(): score for host, score in entries}


def job_id_for(host: str, event: PushEvent, salt: str = "") -> str:
    """A stable job id for (host, reference, digest): a repeated delivery maps to the same id."""
    key = "\n".join([host, event.reference, event.digest or "", salt])
    return "push-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def is_delivery_seen(redis: Redis, endpoint: str, delivery: str) -> bool:
    """Whether a delivery id of that endpoint was queued before."""
    return bool(redis.exists(DELIVERIES_KEY.format(endpoint=endpoint, delivery=delivery)))


def remember_delivery(redis: Redis, endpoint: str, delivery: str) -> None:
    """Mark a delivery id as queued, so a redelivery queues nothing."""
    key = DELIVERIES_KEY.format(endpoint=endpoint, delivery=delivery)
    redis.set(key, 1, ex=DELIVERY_MEMORY_SECONDS)


def _get_text(redis: Redis, key: str) -> str | None:
    raw = redis.get(key)
    return raw.decode() if isinstance(raw, bytes) else raw  # type: ignore[return-value]


def _coalesced_job(redis: Redis, recent_key: str) -> bool:
    """Whether the job remembered under ``recent_key`` has not started yet."""
    job_id = _get_text(redis, recent_key)
    if job_id is None:
        return False
    try:
        status = Job.fetch(job_id, connection=redis, serializer=JSONSerializer).get_status()
    except NoSuchJobError:
        return True  # a concurrent delivery claimed the window and is queuing its job now
    return status in (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.DEFERRED)


def enqueue_push(
    redis: Redis,
    event: PushEvent,
    *,
    retries: int = 3,
    result_ttl: int = 7 * 24 * 3600,
    coalesce_seconds: float = DIGESTLESS_DELAY_SECONDS,
) -> list[QueuedJob]:
    """Queue ``event`` once on the queue of every registered host.

    A push with a digest gets the job id ``job_id_for(host, event)``; RQ's unique enqueue makes
    a repeat a no-op. A push without a digest is scheduled ``coalesce_seconds`` ahead, and
    further deliveries for that host and reference join it while it has not started: senders
    fan one push out into several deliveries, and the job pulls whatever the tag names when it
    runs, so nothing is lost. Raises NoHostsError when no host is registered, and
    redis.RedisError when Redis fails (jobs already queued stay queued and dedupe on retry).
    """
    hosts = sorted(get_hosts(redis))
    if not hosts:
        raise NoHostsError("no worker host has registered; start `podhook worker` on a host")
    results = []
    for host in hosts:
        queue = get_queue(redis, host)
        options: dict[str, Any] = {
            "args": (event.to_dict(),),
            "job_timeout": JOB_TIMEOUT_SECONDS,
            "result_ttl": result_ttl,
            "failure_ttl": result_ttl,
            "retry": Retry(max=retries, interval=RETRY_INTERVALS) if retries > 0 else None,
            "description": f"push {event.reference} {event.digest or '(no digest)'}",
            "meta": {"host": host, "event": event.to_dict()},
            "unique": True,
        }
        if event.digest is not None:
            job_id = job_id_for(host, event)
            try:
                queue.enqueue(JOB_FUNCTION, job_id=job_id, **options)
            except DuplicateJobError:
                results.append(QueuedJob(host, job_id, duplicate=True))
                continue
            results.append(QueuedJob(host, job_id, duplicate=False))
            continue

        recent = RECENT_KEY.format(host=host, reference=event.reference)
        job_id = job_id_for(host, event, salt=f"{time.time():.6f}")
        window = int(coalesce_seconds) + DIGESTLESS_WINDOW_SECONDS
        claimed = redis.set(recent, job_id, nx=True, ex=window)
        if not claimed:
            if _coalesced_job(redis, recent):
                results.append(QueuedJob(host, _get_text(redis, recent) or job_id, duplicate=True))
                continue
            redis.set(recent, job_id, ex=window)
        try:
            queue.enqueue_in(
                timedelta(seconds=coalesce_seconds), JOB_FUNCTION, job_id=job_id, **options
            )
        except Exception:
            with contextlib.suppress(Exception):
                redis.delete(recent)
            raise
        results.append(QueuedJob(host, job_id, duplicate=False))
    return results
