"""The fleet at a glance: each host's health, problems and containers, what happened to each
push, and reconciles asked of several hosts at once."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from workers import audit
from workers.hosts import get_hosts, is_stale
from workers.inventory import get_inventory
from workers.joblog import JobRecord, get_job
from workers.queueing import JobOptions, QueuedJob, get_queue, queue_name, request_reconcile
from workers.report import FAILURE_STATES, JobReport

# Audit entries read at most to answer one filtered question: the trail holds up to 100,000
# entries, and a page that refreshes every 10 s must not read them all.
AUDIT_SCAN_LIMIT = 5000
# Outcomes read first when looking for problems, before all AUDIT_SCAN_LIMIT of them.
PROBLEM_FIRST_READ = 500
# Reconcile jobs are named by their kind (workers/queueing.py new_job_id); their record holds
# no push.
RECONCILE_JOB_PREFIX = "reconcile-"


@dataclass(frozen=True)
class Problem:
    """A container whose newest report row is ``failed`` or ``rolled_back``.

    It stays a problem until a later report (a reconcile, a push) gives that container another
    state, a later complete reconcile of its host no longer lists it, or the host's current
    inventory no longer holds it. A misconfigured container (an invalid policy, no
    PODMAN_SYSTEMD_UNIT label, a ``--rootfs`` container) is one until it is fixed.
    """

    host: str
    container: str
    unit: str | None
    image: str | None
    state: str
    reason: str
    time: float
    job: str | None
    kind: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class HostSummary:
    """One registered host: when its workers last beat, its queue, and what it runs.

    ``containers`` is the inventory its workers last published (name, unit, image, image_id,
    policy per container), or None when none is current; ``inventory_error`` says why Podman
    did not answer when the workers tried. ``stale`` is judged against the settings'
    ``host_stale_after``, as routing judges it; ``problems`` are its containers whose latest
    report failed.
    """

    host: str
    last_heartbeat: float
    heartbeat_age: float
    stale: bool
    queued: int
    workers: int
    failed: int
    containers: list[dict[str, Any]] | None
    inventory_error: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Whether the host's workers beat and none of its containers' latest reports failed."""
        return not self.stale and not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``healthy``."""
        return {**asdict(self), "healthy": self.healthy}


@dataclass(frozen=True)
class Outcome:
    """One attempt of a job: the report its worker saved in the audit trail at ``time``."""

    time: float
    report: JobReport

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``time``, ``started_at``, ``finished_at``, ``summary`` and one
        ``containers`` row per container (state, reason, old and new image ids, timings)."""
        return {
            "time": self.time,
            "started_at": self.report.started_at,
            "finished_at": self.report.finished_at,
            "summary": self.report.summary,
            "containers": [row.to_dict() for row in self.report.rows],
        }


@dataclass(frozen=True)
class UpdateJob:
    """One host's job for a delivered push, with what RQ and the worker say about it.

    ``state`` is RQ's (``queued``, ``started``, ``finished``, ``failed``, ...) or None once
    the job has expired; ``outcomes`` holds the worker's reports, newest attempt first.
    """

    host: str
    job: str
    reference: str
    digest: str | None
    duplicate: bool
    state: str | None
    error: str | None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def container_states(self) -> list[str]:
        """The states of the latest outcome's rows (empty before any outcome)."""
        if not self.outcomes:
            return []
        return [row.state.value for row in self.outcomes[0].report.rows]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "host": self.host,
            "job": self.job,
            "reference": self.reference,
            "digest": self.digest,
            "duplicate": self.duplicate,
            "state": self.state,
            "error": self.error,
            "outcomes": [outcome.to_dict() for outcome in self.outcomes],
        }


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
        data = {name: value for name, value in vars(self).items() if name != "jobs"}
        return {**data, "jobs": [job.to_dict() for job in self.jobs]}


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


def describe_hosts(
    redis: Redis, *, stale_after: float, now: float | None = None
) -> list[HostSummary]:
    """Every registered host, by name, with its heartbeat age (seconds before ``now``), whether
    it is stale (no heartbeat for ``stale_after`` seconds: pass the settings'
    ``host_stale_after``, which routing uses), queue depth, RQ workers on its queue, failed job
    count, current inventory and problems (``find_problems``).

    Raises redis.RedisError when Redis fails.
    """
    now = time.time() if now is None else now
    beats = get_hosts(redis)
    problems = find_problems(redis, sorted(beats))
    summaries = []
    for host, beat in sorted(beats.items()):
        queue = get_queue(redis, host)
        inventory = get_inventory(redis, host)
        containers = None if inventory is None else inventory.get("containers", [])
        error = None if inventory is None else inventory.get("error")
        found = problems.get(host, [])
        if containers is not None and not error:
            # The inventory is current: a container it no longer holds is gone or unlabeled.
            names = {container.get("name") for container in containers}
            found = [problem for problem in found if problem.container in names]
        summaries.append(
            HostSummary(
                host=host,
                last_heartbeat=beat,
                heartbeat_age=max(0.0, round(now - beat, 1)),
                stale=is_stale(beat, stale_after, now),
                queued=queue.count,
                workers=Worker.count(connection=redis, queue=queue),
                failed=queue.failed_job_registry.count,
                containers=containers,
                inventory_error=error,
                problems=found,
            )
        )
    return summaries


def find_problems(redis: Redis, hosts: Sequence[str]) -> dict[str, list[Problem]]:
    """The containers of ``hosts`` whose newest report row failed or rolled back, by host,
    each host's sorted by container name.

    Reads the job outcomes of the audit trail newest first (at most AUDIT_SCAN_LIMIT): the
    first row seen for a container decides, and a host's newest complete reconcile (one that
    could list its containers) decides for every container it does not list. Raises
    redis.RedisError when Redis fails.
    """
    wanted = set(hosts)
    entries: list[audit.AuditEntry] = []
    # Most fleets' answer is in the newest outcomes (every host reconciles each interval):
    # read those first, and the rest only when a host's complete reconcile was not among them.
    for limit in (PROBLEM_FIRST_READ, AUDIT_SCAN_LIMIT):
        entries = audit.read(redis, kind="outcome", limit=limit)
        problems, closed = _problems_in(entries, wanted)
        if closed >= wanted or len(entries) < limit:
            break
    return {host: sorted(found, key=lambda p: p.container) for host, found in problems.items()}


def _problems_in(
    entries: list[audit.AuditEntry], wanted: set[str]
) -> tuple[dict[str, list[Problem]], set[str]]:
    """The problems of the ``wanted`` hosts in ``entries`` (newest first), and the hosts whose
    complete reconcile was among them (nothing older counts for those)."""
    decided: dict[str, set[str]] = {host: set() for host in wanted}
    closed: set[str] = set()
    problems: dict[str, list[Problem]] = {}
    for entry in entries:
        if closed >= wanted:
            break
        report = JobReport.from_dict(entry.data)
        host = report.host
        if host not in wanted or host in closed:
            continue
        for row in report.rows:
            name = row.container_name
            if not name or name in decided[host]:
                continue
            decided[host].add(name)
            if row.state in FAILURE_STATES:
                problems.setdefault(host, []).append(
                    Problem(
                        host=host,
                        container=name,
                        unit=row.unit,
                        image=row.image or None,
                        state=row.state.value,
                        reason=row.reason,
                        time=entry.time,
                        job=report.job,
                        kind=report.kind,
                    )
                )
        if report.kind == "reconcile" and report.error is None:
            closed.add(host)
    return problems, closed


def _outcome_reference(report: JobReport) -> str:
    if report.event is not None:
        return report.event.reference
    return "reconcile" if report.kind == "reconcile" else report.reference


def _outcomes_by_job(entries: list[audit.AuditEntry]) -> dict[str, list[Outcome]]:
    by_job: dict[str, list[Outcome]] = {}
    for entry in entries:  # newest first, as audit.read returns them
        report = JobReport.from_dict(entry.data)
        if report.job:
            by_job.setdefault(report.job, []).append(Outcome(entry.time, report))
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
        report = JobReport.from_dict(entry.data)
        for row in report.rows:
            if row.state not in FAILURE_STATES:
                continue
            failures.append(
                Failure(
                    time=entry.time,
                    host=report.host,
                    job=report.job,
                    reference=_outcome_reference(report),
                    container=row.container_name,
                    unit=row.unit,
                    state=row.state.value,
                    reason=row.reason,
                )
            )
            if len(failures) >= limit:
                return failures
    return failures


def describe_fleet(
    redis: Redis, *, stale_after: float, recent: int = 10, now: float | None = None
) -> FleetStatus:
    """Redis's version and memory, every host (``describe_hosts``, stale after ``stale_after``
    seconds), the depth of every podhook queue (also of hosts no longer registered), the last
    ``recent`` updates and failures.

    Raises redis.RedisError when Redis fails.
    """
    server = redis.info("server")
    memory = redis.info("memory")
    hosts = describe_hosts(redis, stale_after=stale_after, now=now)
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


def is_reconcile_job(record: JobRecord) -> bool:
    """Whether a job is a reconcile (of every labeled container of its host), not a push's."""
    return record.id.startswith(RECONCILE_JOB_PREFIX)


def list_reconciles(redis: Redis, *, limit: int = 10) -> list[JobRecord]:
    """Reconcile jobs of every host, at most ``limit``: those waiting or running, newest first,
    then those that reported, newest report first, each with its state and report (one row
    per labeled container).

    Reads the queues' waiting and running ids and the audit trail's outcomes, and fetches only
    the jobs shown, so a page refreshing every 10 s does not load every job kept. Raises
    redis.RedisError when Redis fails.
    """
    pending: list[JobRecord] = []
    for host in sorted(get_hosts(redis)):
        queue = get_queue(redis, host)
        for ids in (
            queue.get_job_ids(),
            queue.scheduled_job_registry.get_job_ids(),
            queue.started_job_registry.get_job_ids(),
        ):
            for job_id in ids:
                record = get_job(redis, job_id) if job_id.startswith(RECONCILE_JOB_PREFIX) else None
                if record is not None:
                    pending.append(record)
    pending.sort(key=lambda r: r.enqueued_at.timestamp() if r.enqueued_at else 0.0, reverse=True)
    found = pending[:limit]
    seen = {record.id for record in found}
    for entry in audit.read(redis, kind="outcome", limit=AUDIT_SCAN_LIMIT):
        if len(found) >= limit:
            break
        report = JobReport.from_dict(entry.data)
        job_id = report.job or ""
        if report.kind != "reconcile" or not job_id or job_id in seen:
            continue
        seen.add(job_id)
        record = get_job(redis, job_id)
        if record is not None:
            found.append(record)
    return found


class HostSelectionError(Exception):
    """Raised when hosts asked to reconcile cannot take it; nothing was queued.

    ``reasons`` maps each refused host to why.
    """

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or {}


class UnknownHostError(HostSelectionError):
    """Raised when a host named is not registered."""


class StaleHostError(HostSelectionError):
    """Raised when a host named has stopped beating: its queue has no worker to run the job."""


class NoLiveHostError(HostSelectionError):
    """Raised when every host was asked for and none is alive (or none is registered)."""


@dataclass(frozen=True)
class ReconcileRequest:
    """The reconciles asked for: each host's job (``duplicate`` when it joined the waiting
    one), and the stale hosts that "every host" left out, with why."""

    queued: list[QueuedJob]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``jobs`` by host (``job``, ``duplicate``) and ``skipped``."""
        return {
            "jobs": {q.host: {"job": q.job_id, "duplicate": q.duplicate} for q in self.queued},
            "skipped": dict(self.skipped),
        }


def _stale_reason(age: float, stale_after: float) -> str:
    return f"stale: no heartbeat for {age:.0f} s (stale after {stale_after:.0f} s)"


def request_reconciles(
    redis: Redis,
    hosts: Sequence[str] | None,
    *,
    stale_after: float,
    options: JobOptions | None = None,
    dry_run: bool | None = None,
    rollback: bool | None = None,
    now: float | None = None,
) -> ReconcileRequest:
    """Queue a reconcile on each of ``hosts``, or with None on every live host, through their
    queues (``queueing.request_reconcile``: a plain one joins the reconcile already waiting;
    one with ``dry_run`` or ``rollback`` is queued on its own, those overriding the host's
    settings).

    Checks every named host before queuing any: raises UnknownHostError for hosts that are not
    registered and StaleHostError for hosts whose workers have not beaten for ``stale_after``
    seconds (the settings' ``host_stale_after``), each with its reason per host; with None,
    stale hosts are left out (``skipped``) and NoLiveHostError is raised when none is left.
    Raises redis.RedisError when Redis fails.
    """
    now = time.time() if now is None else now
    beats = get_hosts(redis)
    skipped: dict[str, str] = {}
    if hosts is None:
        chosen = []
        for host, beat in sorted(beats.items()):
            if is_stale(beat, stale_after, now):
                skipped[host] = _stale_reason(now - beat, stale_after)
            else:
                chosen.append(host)
        if not chosen:
            raise NoLiveHostError(
                "no live host to reconcile" if beats else "no host registered", skipped
            )
    else:
        chosen = list(dict.fromkeys(hosts))
        if not chosen:
            raise HostSelectionError("no host named")
        unknown = {h: "not registered" for h in chosen if h not in beats}
        if unknown:
            raise UnknownHostError(f"no such host: {', '.join(unknown)}", unknown)
        stale = {
            h: _stale_reason(now - beats[h], stale_after)
            for h in chosen
            if is_stale(beats[h], stale_after, now)
        }
        if stale:
            raise StaleHostError("; ".join(f"{h} is {why}" for h, why in stale.items()), stale)
    options = options or JobOptions()
    queued = [
        request_reconcile(redis, host, options, dry_run=dry_run, rollback=rollback)
        for host in chosen
    ]
    return ReconcileRequest(queued, skipped)
