"""The fleet at a glance: each host's health and containers, and what happened to each push."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from workers import audit
from workers.hosts import DEFAULT_STALE_AFTER_SECONDS, get_hosts
from workers.inventory import get_inventory
from workers.joblog import get_job
from workers.queueing import get_queue, queue_name

# Audit entries read at most to answer one filtered question: the trail holds up to 100,000
# entries, and a page that refreshes every 10 s must not read them all.
AUDIT_SCAN_LIMIT = 5000
FAILURE_STATES = ("failed", "rolled_back")


@dataclass(frozen=True)
class HostSummary:
    """One registered host: when its workers last beat, its queue, and what it runs.

    ``containers`` is the inventory its workers last published (name, unit, image, image_id,
    policy per container), or None when none is current; ``inventory_error`` says why Podman
    did not answer when the workers tried.
    """

    host: str
    last_heartbeat: float
    heartbeat_age: float
    queued: int
    workers: int
    failed: int
    containers: list[dict[str, Any]] | None
    inventory_error: str | None = None

    @property
    def stale(self) -> bool:
        """Whether the host's workers missed several heartbeats."""
        return self.heartbeat_age > DEFAULT_STALE_AFTER_SECONDS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``stale``."""
        return {**asdict(self), "stale": self.stale}


@dataclass(frozen=True)
class UpdateJob:
    """One host's job for a delivered push, with what RQ and the worker say about it.

    ``state`` is RQ's (``queued``, ``started``, ``finished``, ``failed``, ...) or None once
    the job has expired; ``outcomes`` holds the worker's reports, newest attempt first, each
    with ``time``, ``started_at``, ``finished_at``, ``summary`` and one ``containers`` row per
    container (state, reason, old and new image ids, timings).
    """

    host: str
    job: str
    reference: str
    digest: str | None
    duplicate: bool
    state: str | None
    error: str | None
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def container_states(self) -> list[str]:
        """The states of the latest outcome's rows (empty before any outcome)."""
        if not self.outcomes:
            return []
        return [row.get("state", "") for row in self.outcomes[0].get("containers", [])]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Update:
    """A delivery and all that followed from it: the answer to "what happened to my push?"."""

    id: str
    time: float
    endpoint: str
    source: str
    delivery: str | None
    received_at: float | None
    queued_at: float | None
    ignored: int
    jobs: list[UpdateJob]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "jobs": [job.to_dict() for job in self.jobs]}


@dataclass(frozen=True)
class Failure:
    """A container a push left failed or rolled back, from the audit trail."""

    time: float
    host: str
    job: str | None
    reference: str
    container: str
    unit: str | None
    state: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class FleetStatus:
    """One screen of status: Redis, the hosts, every podhook queue, recent updates and failures."""

    redis_version: str
    redis_used_memory: int
    redis_used_memory_human: str
    hosts: list[HostSummary]
    queues: dict[str, int]
    updates: list[Update]
    failures: list[Failure]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "redis": {
                "version": self.redis_version,
                "used_memory": self.redis_used_memory,
                "used_memory_human": self.redis_used_memory_human,
            },
            "hosts": [host.to_dict() for host in self.hosts],
            "queues": self.queues,
            "updates": [update.to_dict() for update in self.updates],
            "failures": [failure.to_dict() for failure in self.failures],
        }


def describe_hosts(redis: Redis, now: float | None = None) -> list[HostSummary]:
    """Every registered host, by name, with its heartbeat age (seconds before ``now``), queue
    depth, RQ workers on its queue, failed job count and current inventory.

    Raises redis.RedisError when Redis fails.
    """
    now = time.time() if now is None else now
    summaries = []
    for host, beat in sorted(get_hosts(redis).items()):
        queue = get_queue(redis, host)
        inventory = get_inventory(redis, host)
        summaries.append(
            HostSummary(
                host=host,
                last_heartbeat=beat,
                heartbeat_age=max(0.0, round(now - beat, 1)),
                queued=queue.count,
                workers=Worker.count(connection=redis, queue=queue),
                failed=queue.failed_job_registry.count,
                containers=None if inventory is None else inventory.get("containers", []),
                inventory_error=None if inventory is None else inventory.get("error"),
            )
        )
    return summaries


def _outcome_reference(report: dict[str, Any]) -> str:
    event = report.get("event") or {}
    return f"{event.get('registry')}/{event.get('repository')}:{event.get('tag')}"


def _outcomes_by_job(entries: list[audit.AuditEntry]) -> dict[str, list[dict[str, Any]]]:
    by_job: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:  # newest first, as audit.read returns them
        job_id = entry.data.get("job")
        if not job_id:
            continue
        by_job.setdefault(job_id, []).append(
            {
                "time": entry.time,
                "started_at": entry.data.get("started_at"),
                "finished_at": entry.data.get("finished_at"),
                "summary": entry.data.get("summary", {}),
                "containers": entry.data.get("containers", []),
            }
        )
    return by_job


def list_updates(
    redis: Redis,
    *,
    image: str | None = None,
    host: str | None = None,
    since: float | None = None,
    limit: int = 50,
) -> list[Update]:
    """Deliveries newest first, at most ``limit``, each joined with its jobs' current RQ state
    and the outcomes their workers reported.

    ``image`` keeps jobs whose reference contains that text, ``host`` keeps one host's jobs (a
    delivery left without jobs is dropped), ``since`` (unix seconds) keeps deliveries received
    after it. Filtered questions look at the newest AUDIT_SCAN_LIMIT entries of each kind.
    Raises redis.RedisError when Redis fails.
    """
    filtered = bool(image or host)
    if since is not None and since <= 0:
        since = None  # the stream's ids start at 0: earlier means everything
    deliveries = audit.read(
        redis, since=since, kind="delivery", limit=AUDIT_SCAN_LIMIT if filtered else limit
    )
    chosen: list[tuple[audit.AuditEntry, list[dict[str, Any]]]] = []
    for entry in deliveries:
        jobs = [
            job
            for job in entry.data.get("jobs", [])
            if (not host or job.get("host") == host)
            and (not image or image in str(job.get("reference", "")))
        ]
        if jobs or not filtered:
            chosen.append((entry, jobs))
        if len(chosen) >= limit:
            break
    if not chosen:
        return []
    oldest = min(entry.time for entry, _ in chosen)
    outcomes = _outcomes_by_job(
        audit.read(redis, since=oldest, kind="outcome", limit=AUDIT_SCAN_LIMIT)
    )
    updates = []
    for entry, jobs in chosen:
        update_jobs = []
        for job in jobs:
            job_id = str(job.get("job", ""))
            record = get_job(redis, job_id) if job_id else None
            update_jobs.append(
                UpdateJob(
                    host=str(job.get("host", "")),
                    job=job_id,
                    reference=str(job.get("reference", "")),
                    digest=job.get("digest"),
                    duplicate=bool(job.get("duplicate")),
                    state=record.state if record else None,
                    error=record.error if record else None,
                    outcomes=outcomes.get(job_id, []),
                )
            )
        data = entry.data
        updates.append(
            Update(
                id=entry.id,
                time=entry.time,
                endpoint=str(data.get("endpoint", "")),
                source=str(data.get("source", "")),
                delivery=data.get("delivery"),
                received_at=data.get("received_at"),
                queued_at=data.get("queued_at"),
                ignored=int(data.get("ignored") or 0),
                jobs=update_jobs,
            )
        )
    return updates


def list_failures(redis: Redis, *, limit: int = 10) -> list[Failure]:
    """Containers that pushes left failed or rolled back, newest first, at most ``limit``.

    Raises redis.RedisError when Redis fails.
    """
    failures: list[Failure] = []
    for entry in audit.read(redis, kind="outcome", limit=AUDIT_SCAN_LIMIT):
        for row in entry.data.get("containers", []):
            if row.get("state") not in FAILURE_STATES:
                continue
            failures.append(
                Failure(
                    time=entry.time,
                    host=str(entry.data.get("host", "")),
                    job=entry.data.get("job"),
                    reference=_outcome_reference(entry.data),
                    container=str(row.get("container_name", "")),
                    unit=row.get("unit"),
                    state=str(row["state"]),
                    reason=str(row.get("reason", "")),
                )
            )
            if len(failures) >= limit:
                return failures
    return failures


def describe_fleet(redis: Redis, *, recent: int = 10, now: float | None = None) -> FleetStatus:
    """Redis's version and memory, every host (``describe_hosts``), the depth of every podhook
    queue (also of hosts no longer registered), the last ``recent`` updates and failures.

    Raises redis.RedisError when Redis fails.
    """
    server = redis.info("server")
    memory = redis.info("memory")
    hosts = describe_hosts(redis, now=now)
    queues = {queue_name(summary.host): summary.queued for summary in hosts}
    for queue in Queue.all(connection=redis, serializer=JSONSerializer):
        if queue.name.startswith(queue_name("")) and queue.name not in queues:
            queues[queue.name] = queue.count
    return FleetStatus(
        redis_version=str(server.get("redis_version", "")),
        redis_used_memory=int(memory.get("used_memory", 0)),
        redis_used_memory_human=str(memory.get("used_memory_human", "")),
        hosts=hosts,
        queues=dict(sorted(queues.items())),
        updates=list_updates(redis, limit=recent),
        failures=list_failures(redis, limit=recent),
    )
