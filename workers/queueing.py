"""The fleet in Redis: registered hosts, their queues, and queuing one job per host for a push."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from workers.events import PushEvent
from workers.settings import Settings

HOSTS_KEY = "podhook:hosts"
DELIVERIES_KEY = "podhook:delivery:{endpoint}:{delivery}"
RECENT_KEY = "podhook:recent:{host}:{reference}"
LAST_DIGEST_KEY = "podhook:last-digest:{host}:{reference}"
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
# How long one job may run before RQ stops it: a pull and two restarts with their settle
# windows per unit, for several units. Per-unit locks live as long, and waits end sooner.
DEFAULT_JOB_TIMEOUT_SECONDS = 1800


class NoHostsError(RuntimeError):
    """Raised when no worker host has registered, so a push would reach nobody."""


@dataclass(frozen=True)
class QueuedJob:
    """One host's job for a push; ``duplicate`` when an identical job already existed."""

    host: str
    job_id: str
    duplicate: bool


def redis_from_settings(settings: Settings) -> Redis:
    """A Redis client for the configured URL (the local default when none is set)."""
    return Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")


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


def _job_status(redis: Redis, job_id: str) -> JobStatus | None:
    """The status of a job, or None when there is no such job (any more)."""
    try:
        return Job.fetch(job_id, connection=redis, serializer=JSONSerializer).get_status()
    except NoSuchJobError:
        return None


_WAITING = (JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.DEFERRED)


def enqueue_push(
    redis: Redis,
    event: PushEvent,
    *,
    retries: int = 3,
    result_ttl: int = 7 * 24 * 3600,
    coalesce_seconds: float = DIGESTLESS_DELAY_SECONDS,
    job_timeout: int = DEFAULT_JOB_TIMEOUT_SECONDS,
) -> list[QueuedJob]:
    """Queue ``event`` once on the queue of every registered host.

    A push with a digest gets the job id ``job_id_for(host, event)``: a repeat is a duplicate
    while that job waits or runs, and after it finished as long as no other digest was queued
    for the reference since (a tag moved back to an older image is a new push, and so is a
    push whose job failed). A push without a digest is scheduled ``coalesce_seconds`` ahead,
    and further deliveries for that host and reference join it while it has not started:
    senders fan one push out into several deliveries, and the job pulls whatever the tag names
    when it runs, so nothing is lost. Raises NoHostsError when no host is registered, and
    redis.RedisError when Redis fails (jobs already queued stay queued and dedupe on retry).
    """
    hosts = sorted(get_hosts(redis))
    if not hosts:
        raise NoHostsError("no worker host has registered; start `podhook worker` on a host")
    options: dict[str, Any] = {
        "args": (event.to_dict(),),
        "job_timeout": job_timeout,
        "result_ttl": result_ttl,
        "failure_ttl": result_ttl,
        "retry": Retry(max=retries, interval=RETRY_INTERVALS) if retries > 0 else None,
        "description": f"push {event.reference} {event.digest or '(no digest)'}",
    }
    results = []
    for host in hosts:
        queue = get_queue(redis, host)
        meta = {"host": host, "event": event.to_dict()}
        if event.digest is not None:
            results.append(_enqueue_digest(redis, queue, host, event, meta, options, result_ttl))
        else:
            window = int(coalesce_seconds) + DIGESTLESS_WINDOW_SECONDS
            results.append(
                _enqueue_coalesced(
                    redis, queue, host, event, meta, options, coalesce_seconds, window
                )
            )
    return results


def _enqueue_digest(
    redis: Redis,
    queue: Queue,
    host: str,
    event: PushEvent,
    meta: dict[str, Any],
    options: dict[str, Any],
    result_ttl: int,
) -> QueuedJob:
    job_id = job_id_for(host, event)
    last_key = LAST_DIGEST_KEY.format(host=host, reference=event.reference)
    status = _job_status(redis, job_id)
    if status in (*_WAITING, JobStatus.STARTED) or (
        status is JobStatus.FINISHED and _get_text(redis, last_key) == event.digest
    ):
        return QueuedJob(host, job_id, duplicate=True)
    if status is not None:
        job_id = job_id_for(host, event, salt=f"{time.time():.6f}")
    try:
        queue.enqueue(JOB_FUNCTION, job_id=job_id, meta=meta, unique=True, **options)
    except DuplicateJobError:
        return QueuedJob(host, job_id, duplicate=True)
    redis.set(last_key, event.digest or "", ex=result_ttl)
    return QueuedJob(host, job_id, duplicate=False)


def _enqueue_coalesced(
    redis: Redis,
    queue: Queue,
    host: str,
    event: PushEvent,
    meta: dict[str, Any],
    options: dict[str, Any],
    delay: float,
    window: int,
) -> QueuedJob:
    recent = RECENT_KEY.format(host=host, reference=event.reference)
    job_id = job_id_for(host, event, salt=f"{time.time():.6f}")
    with redis.pipeline() as pipe:
        try:
            # WATCH makes "is a job waiting? if not, schedule one and remember it" one step:
            # of two deliveries at once, one schedules and the other sees it.
            pipe.watch(recent)
            waiting = _get_text(pipe, recent)  # type: ignore[arg-type]
            if waiting and _job_status(redis, waiting) in _WAITING:
                return QueuedJob(host, waiting, duplicate=True)
            pipe.multi()
            queue.enqueue_in(
                timedelta(seconds=delay),
                JOB_FUNCTION,
                job_id=job_id,
                meta=meta,
                pipeline=pipe,
                **options,
            )
            pipe.set(recent, job_id, ex=window)
            pipe.execute()
        except WatchError:
            return QueuedJob(host, _get_text(redis, recent) or job_id, duplicate=True)
    return QueuedJob(host, job_id, duplicate=False)
