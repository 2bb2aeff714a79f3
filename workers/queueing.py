"""Convergence work in RQ: one job per (host, reference) at a time, that hints join.

A push is not replayed: it asks each concerned host to make its containers of the reference
run what the reference names now. While such a job waits, further hints for that host and
reference join it; while it runs, they mark it to look once more when it ends. The work key
``podhook:work:<host>:<reference>`` holds which job that is and whether it waits or runs.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import WatchError
from rq import Queue, Retry, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from workers.redis_connection import LuaScript, connect
from workers.settings import Settings

DELIVERIES_KEY = "podhook:delivery:{endpoint}:{delivery}"
WORK_KEY_PREFIX = "podhook:work:"
WORK_KEY = WORK_KEY_PREFIX + "{host}:{reference}"
CONVERGE_FUNCTION = "workers.jobs.converge"
RECONCILE_FUNCTION = "workers.jobs.reconcile"

# GitHub redelivers by hand for up to three days; remember delivery ids that long.
DELIVERY_MEMORY_SECONDS = 3 * 24 * 3600
# Backoff between attempts of a job that failed for a passing reason (registry or Podman down,
# a mirror that does not serve the pushed digest yet).
RETRY_INTERVALS = [10, 30, 90]
# How long one job may run before RQ stops it: a pull and two restarts with their settle
# windows per unit, for several units. Per-unit locks live as long, and waits end sooner.
DEFAULT_JOB_TIMEOUT_SECONDS = 1800
RECONCILE_TIMER_KEY = "podhook:reconcile-timer:{host}"
# The periodic reconcile of the hosts of a fleet should not hit a registry all at once.
RECONCILE_JITTER = 0.1
# A job that gave up because a service stayed down is picked up by a reconcile this soon.
RECONCILE_AFTER_GIVING_UP_SECONDS = 120
# Attempts of the optimistic transaction before a hint gives up (only under heavy contention).
_WATCH_ATTEMPTS = 20


class NoHostsError(RuntimeError):
    """Raised when no worker host has registered, so a push would reach nobody."""


@dataclass(frozen=True)
class QueuedJob:
    """One host's job for a reference; ``duplicate`` when the hint joined a job already there."""

    host: str
    job_id: str
    duplicate: bool


@dataclass(frozen=True)
class JobOptions:
    """How convergence jobs are queued: retries with backoff, how long they may run, and how
    long their records are kept."""

    retries: int = 3
    job_timeout: int = DEFAULT_JOB_TIMEOUT_SECONDS
    result_ttl: int = 7 * 24 * 3600

    @classmethod
    def from_settings(cls, settings: Settings) -> JobOptions:
        """The options the settings name."""
        return cls(settings.job_retries, settings.job_timeout, settings.result_ttl)


def redis_from_settings(settings: Settings) -> Redis:
    """A worker's Redis client (workers/redis_connection.py: a URL or a Sentinel primary)."""
    return connect(settings, role="worker")


def queue_name(host: str) -> str:
    """The RQ queue a host's workers listen on."""
    return f"podhook-{host}"


def get_queue(redis: Redis, host: str) -> Queue:
    """The RQ queue of a host, with podhook's JSON serializer."""
    return Queue(queue_name(host), connection=redis, serializer=JSONSerializer)


def work_key(host: str, reference: str) -> str:
    """The Redis key of the convergence work of one host and reference."""
    return WORK_KEY.format(host=host, reference=reference)


def work_key_pattern(host: str) -> str:
    """A SCAN pattern matching every work key of ``host``."""
    return WORK_KEY.format(host=host, reference="*")


def new_job_id(kind: str, host: str, reference: str) -> str:
    """A fresh job id that names its kind and, by a stable prefix, its host and reference."""
    stem = hashlib.sha256(f"{host}\n{reference}".encode()).hexdigest()[:16]
    return f"{kind}-{stem}-{uuid.uuid4().hex[:12]}"


def delivery_key(endpoint: str, delivery: str) -> str:
    """The Redis key that exists while a delivery id of that endpoint is remembered."""
    return DELIVERIES_KEY.format(endpoint=endpoint, delivery=delivery)


def is_delivery_seen(redis: Redis, endpoint: str, delivery: str) -> bool:
    """Whether a delivery id of that endpoint was queued before."""
    return bool(redis.exists(delivery_key(endpoint, delivery)))


def remember_delivery(redis: Redis, endpoint: str, delivery: str) -> None:
    """Mark a delivery id as queued, so a redelivery queues nothing. ``redis`` may be a
    pipeline."""
    redis.set(delivery_key(endpoint, delivery), 1, ex=DELIVERY_MEMORY_SECONDS)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_work(pipe: Any, key: str) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in pipe.hgetall(key).items()}


# Where a hint for (host, reference) goes, in Lua, for every script that decides it (the routing
# script of workers/routing.py and _COMMIT below): ``decide(work_key)`` returns "join" and the
# job that waits (or runs, its work still marked waiting: a retry), "again" and the job that
# runs (marked to look once more when it ends), or "new" when no live job holds the work.
# ``job_liveness`` says the same in Python. The script is given ARGV[1] and ARGV[2]: RQ's key
# prefixes of jobs and of workers.
DECIDE_LUA = """
local job_prefix, worker_prefix = ARGV[1], ARGV[2]
local function liveness(job)
    if not job or job == '' then return 'gone' end
    local fields = redis.call('HMGET', job_prefix .. job, 'status', 'worker_name')
    local status, worker = fields[1], fields[2]
    if status == 'queued' or status == 'scheduled' or status == 'deferred' then
        return 'pending'
    end
    if status == 'started' and worker and worker ~= '' then
        if redis.call('EXISTS', worker_prefix .. worker) == 1 then return 'running' end
    end
    return 'gone'
end
local function decide(work_key)
    local work = redis.call('HMGET', work_key, 'job', 'state')
    local live = liveness(work[1])
    if live == 'pending' or (live == 'running' and work[2] == 'waiting') then
        return 'join', work[1]
    end
    if live == 'running' then
        redis.call('HSET', work_key, 'again', '1')
        return 'again', work[1]
    end
    return 'new', ''
end
"""

# Queues the jobs prepared for (host, reference) pairs whose work no live job holds, as one
# atomic step with the decision: KEYS are their work keys; ARGV after the two prefixes gives,
# per key, the job id, the work key's time to live and RQ's own commands for the job (their
# count, then each command's length and words). A pair whose work a job took meanwhile joins
# it instead, and its commands are skipped. Replies {decision, job} per key.
# RQ's commands touch keys not in KEYS (the job's hash, the queue): fine outside Redis Cluster,
# which podhook does not support.
_COMMIT = LuaScript(
    DECIDE_LUA
    + """
local pos, replies = 3, {}
for i, work_key in ipairs(KEYS) do
    local job_id, ttl, commands = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
    pos = pos + 3
    local decision, job = decide(work_key)
    for _ = 1, commands do
        local words = tonumber(ARGV[pos])
        if decision == 'new' then redis.call(unpack(ARGV, pos + 1, pos + words)) end
        pos = pos + 1 + words
    end
    if decision == 'new' then
        redis.call('HSET', work_key, 'job', job_id, 'state', 'waiting', 'again', '0')
        redis.call('EXPIRE', work_key, ttl)
        job = job_id
    end
    replies[i] = {decision, job}
end
return replies
"""
)


def lua_prefixes() -> list[str]:
    """The ARGV[1] and ARGV[2] that DECIDE_LUA expects: RQ's key prefixes of jobs and workers."""
    return [Job.redis_job_namespace_prefix, Worker.redis_worker_namespace_prefix]


@dataclass(frozen=True)
class PreparedJob:
    """A convergence job built by RQ but not stored yet: its id and the commands (words of
    each) that RQ's ``enqueue_call`` would send to store and queue it."""

    host: str
    reference: str
    job_id: str
    commands: tuple[tuple[Any, ...], ...]


def prepare_convergence(
    redis: Redis,
    host: str,
    reference: str,
    options: JobOptions | None = None,
    *,
    hint: dict[str, Any] | None = None,
    at_front: bool = False,
) -> PreparedJob:
    """Build the convergence job of (host, reference) as RQ would queue it, without storing it.

    RQ's ``enqueue_call`` writes it into a pipeline that is never executed: the commands it
    holds are exactly what RQ stores, for ``commit_convergence`` to run. Sends nothing to
    Redis (but RQ's one INFO per client, for the server version).
    """
    options = options or JobOptions()
    job_id = new_job_id("converge", host, reference)
    pipe = redis.pipeline(transaction=True)
    get_queue(redis, host).enqueue_call(
        CONVERGE_FUNCTION,
        args=(host, reference),
        job_id=job_id,
        timeout=options.job_timeout,
        result_ttl=options.result_ttl,
        failure_ttl=options.result_ttl,
        retry=Retry(max=options.retries, interval=RETRY_INTERVALS) if options.retries > 0 else None,
        description=f"converge {reference}",
        meta={"host": host, "reference": reference, "event": hint or {}},
        pipeline=pipe,
        at_front=at_front,
    )
    commands = tuple(tuple(args) for args, _ in pipe.command_stack)
    pipe.reset()
    return PreparedJob(host, reference, job_id, commands)


def work_ttl(options: JobOptions) -> int:
    """Seconds a work key lives: longer than every attempt of its job, so a crashed worker
    cannot pin the work for good."""
    return options.job_timeout * (options.retries + 2) + sum(RETRY_INTERVALS)


def commit_convergence(
    redis: Redis, prepared: list[PreparedJob], options: JobOptions | None = None
) -> list[QueuedJob]:
    """Queue each prepared job unless a live job holds its (host, reference) already: one
    round trip, atomic with the decision (see ``request_convergence``). Returns one QueuedJob
    per prepared job, in order. Raises redis.RedisError when Redis fails.
    """
    if not prepared:
        return []
    ttl = work_ttl(options or JobOptions())
    args: list[Any] = lua_prefixes()
    for job in prepared:
        args += [job.job_id, ttl, len(job.commands)]
        for command in job.commands:
            args += [len(command), *command]
    keys = [work_key(job.host, job.reference) for job in prepared]
    replies = _COMMIT(redis, keys, args)
    return [
        QueuedJob(job.host, _text(queued), duplicate=_text(decision) != "new")
        for job, (decision, queued) in zip(prepared, replies, strict=True)
    ]


def request_convergence(
    redis: Redis,
    host: str,
    reference: str,
    options: JobOptions | None = None,
    *,
    hint: dict[str, Any] | None = None,
    at_front: bool = False,
) -> QueuedJob:
    """Ask ``host`` to converge its containers of ``reference`` on what the reference names.

    Joins the host's job for that reference when one waits (``duplicate``); marks it to look
    again when it ends if it runs; else queues a new job (``workers.jobs.converge``), stored
    with the work key in one atomic script, so a hint is never lost between a job's last look
    and its end. ``hint`` (the push that asked, for the record) goes into the job's meta.
    Raises redis.RedisError when Redis fails.
    """
    job = prepare_convergence(redis, host, reference, options, hint=hint, at_front=at_front)
    [queued] = commit_convergence(redis, [job], options)
    return queued


def start_work(redis: Redis, host: str, reference: str, job_id: str, ttl: int) -> bool:
    """Mark the work of (host, reference) as run by ``job_id`` and clear its "again" mark.

    Returns False when the work key names another job (the host was forgotten, or a newer job
    took over): the caller then still converges, which is harmless, but owns nothing.
    """
    key = work_key(host, reference)
    with redis.pipeline() as pipe:
        try:
            pipe.watch(key)
            owner = pipe.hget(key, "job")
            if owner is not None and _text(owner) != job_id:
                return False
            pipe.multi()
            pipe.hset(key, mapping={"job": job_id, "state": "running", "again": "0"})
            pipe.expire(key, ttl)
            pipe.execute()
            return True
        except WatchError:
            # A hint marked it "again" in between: the job is ours all the same.
            redis.hset(key, mapping={"job": job_id, "state": "running"})
            return True


def finish_work(redis: Redis, host: str, reference: str, job_id: str, *, retrying: bool) -> bool:
    """End a job's turn on (host, reference). Returns True when a hint came while it ran and
    the job must look once more (the work stays ``running``, its mark cleared); otherwise the
    work is released (or, with ``retrying``, left ``waiting`` for RQ's next attempt, which
    hints then join) and False is returned. Atomic against concurrent hints.
    """
    key = work_key(host, reference)
    for _ in range(_WATCH_ATTEMPTS):
        with redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                current = _read_work(pipe, key)
                if current.get("job") != job_id:
                    pipe.unwatch()
                    return False
                pipe.multi()
                if current.get("again") == "1" and not retrying:
                    pipe.hset(key, "again", "0")
                    pipe.execute()
                    return True
                if retrying:
                    pipe.hset(key, mapping={"state": "waiting", "again": "0"})
                else:
                    pipe.delete(key)
                pipe.execute()
                return False
            except WatchError:
                continue
    return False


def release_work(redis: Redis, host: str, reference: str, job_id: str) -> None:
    """Release the work of (host, reference) if ``job_id`` holds it, whatever hints came:
    for a job that ends on a failure another look must not repeat by itself."""
    key = work_key(host, reference)
    for _ in range(_WATCH_ATTEMPTS):
        with redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if _text(pipe.hget(key, "job") or b"") != job_id:
                    return
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
                return
            except WatchError:
                continue  # a hint marked it in between: release it all the same


def is_work_running(redis: Redis, host: str, reference: str) -> bool:
    """Whether a job of ``host`` is converging ``reference`` right now (in a live worker)."""
    current = _read_work(redis, work_key(host, reference))
    return current.get("state") == "running" and job_liveness(redis, current["job"]) == "running"


def job_liveness(redis: Any, job_id: str) -> str:
    """Where job ``job_id`` stands: ``running`` (started, and the worker that took it still
    beats), ``pending`` (queued, or waiting for a retry or its schedule), or ``gone`` (ended,
    deleted, or its work-horse or worker died). ``redis`` may be a watching pipeline."""
    status, worker = redis.hmget(Job.key_for(job_id), "status", "worker_name")
    status = _text(status or b"")
    if status in ("queued", "scheduled", "deferred"):
        return "pending"
    if status == "started" and worker:
        alive = redis.exists(Worker.redis_worker_namespace_prefix + _text(worker))
        return "running" if alive else "gone"
    return "gone"


def job_is_alive(redis: Redis, job_id: str) -> bool:
    """Whether job ``job_id`` runs now in a worker that still beats (for lock holders)."""
    return job_liveness(redis, job_id) == "running"


def request_reconcile(
    redis: Redis,
    host: str,
    options: JobOptions | None = None,
    *,
    at_front: bool = False,
    dry_run: bool | None = None,
    rollback: bool | None = None,
) -> QueuedJob:
    """Queue a reconcile of every labeled container of ``host`` unless one already waits
    (a reconcile asked for with ``dry_run`` or ``rollback`` is always queued on its own).

    Raises redis.RedisError when Redis fails.
    """
    options = options or JobOptions()
    if dry_run is not None or rollback is not None:
        job_id = _enqueue_reconcile(redis, host, options, (host, dry_run, rollback), at_front)
        return QueuedJob(host, job_id, duplicate=False)
    key = work_key(host, "*reconcile*")
    with redis.pipeline() as pipe:
        try:
            pipe.watch(key)
            waiting = pipe.get(key)
            if waiting is not None:
                return QueuedJob(host, _text(waiting), duplicate=True)
            pipe.multi()
            job_id = _enqueue_reconcile(redis, host, options, (host,), at_front, pipe)
            pipe.set(key, job_id, ex=options.job_timeout)
            pipe.execute()
            return QueuedJob(host, job_id, duplicate=False)
        except WatchError:
            return QueuedJob(host, _text(redis.get(key) or b""), duplicate=True)


def _enqueue_reconcile(
    redis: Redis,
    host: str,
    options: JobOptions,
    args: tuple[Any, ...],
    at_front: bool,
    pipeline: Any = None,
) -> str:
    job_id = new_job_id("reconcile", host, "")
    dry_run = len(args) > 1 and args[1]
    get_queue(redis, host).enqueue_call(
        RECONCILE_FUNCTION,
        args=args,
        job_id=job_id,
        timeout=options.job_timeout,
        result_ttl=options.result_ttl,
        failure_ttl=options.result_ttl,
        description="reconcile every labeled container" + (" (dry run)" if dry_run else ""),
        meta={"host": host, "reference": "*"},
        pipeline=pipeline,
        at_front=at_front,
    )
    return job_id


def release_reconcile(redis: Redis, host: str) -> None:
    """Let the next reconcile of ``host`` be queued (called when one starts)."""
    redis.delete(work_key(host, "*reconcile*"))


def reconcile_due(redis: Redis, host: str, interval: float) -> bool:
    """Whether this host's periodic reconcile is due now; if so, the next one is timed.

    Shared by every worker process of the host through Redis, so one of them queues it.
    """
    if interval <= 0:
        return False
    seconds = max(1, round(interval * random.uniform(1 - RECONCILE_JITTER, 1 + RECONCILE_JITTER)))
    return bool(redis.set(RECONCILE_TIMER_KEY.format(host=host), 1, nx=True, ex=seconds))


def reconcile_soon(redis: Redis, host: str, interval: float) -> None:
    """Bring this host's next periodic reconcile forward to at most
    RECONCILE_AFTER_GIVING_UP_SECONDS from now (nothing when reconciles are off)."""
    if interval <= 0:
        return
    key = RECONCILE_TIMER_KEY.format(host=host)
    seconds = min(RECONCILE_AFTER_GIVING_UP_SECONDS, round(interval))
    ttl = redis.ttl(key)
    if not isinstance(ttl, int) or ttl < 0 or ttl > seconds:
        redis.set(key, 1, ex=max(1, seconds))
