"""Read the job record back: recent and failed jobs per host, each with its report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from workers import audit
from workers.hosts import get_hosts
from workers.queueing import get_queue
from workers.report import JobReport

STATES = ("queued", "started", "scheduled", "finished", "failed")


@dataclass(frozen=True)
class JobRecord:
    """One job as people inspect it: where it ran, what push it was for, and how it ended.

    ``report`` is what its worker saved, None before one did.
    """

    id: str
    host: str
    state: str
    event: dict[str, Any]
    enqueued_at: datetime | None
    ended_at: datetime | None
    report: JobReport | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601)."""
        return {
            "id": self.id,
            "host": self.host,
            "state": self.state,
            "event": self.event,
            "enqueued_at": self.enqueued_at.isoformat() if self.enqueued_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "report": self.report.to_dict() if self.report is not None else None,
            "error": self.error,
        }


def _record(job: Job) -> JobRecord:
    status = job.get_status(refresh=False)
    state = status.value if isinstance(status, JobStatus) else str(status)
    result = job.return_value(refresh=False) if state == "finished" else None
    stored = job.meta.get("report") or (result if isinstance(result, dict) else None)
    error = None
    if state == "failed":
        latest = job.latest_result()
        error = (latest.exc_string or "").strip().splitlines()[-1] if latest else None
    return JobRecord(
        id=job.id,
        host=job.meta.get("host", ""),
        state=state,
        event=job.meta.get("event", {}),
        enqueued_at=job.enqueued_at,
        ended_at=job.ended_at,
        report=JobReport.from_dict(stored) if stored else None,
        error=error,
    )


def _ids_by_state(redis: Redis, host: str) -> Iterable[tuple[str, list[str]]]:
    queue = get_queue(redis, host)
    yield "queued", queue.get_job_ids()
    yield "started", queue.started_job_registry.get_job_ids()
    yield "scheduled", queue.scheduled_job_registry.get_job_ids()
    yield "finished", queue.finished_job_registry.get_job_ids()
    yield "failed", queue.failed_job_registry.get_job_ids()


def _newest_first_key(record: JobRecord) -> datetime:
    stamp = record.enqueued_at or datetime.min
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _event_reference(event: dict[str, Any]) -> str:
    return f"{event.get('registry')}/{event.get('repository')}:{event.get('tag')}"


def list_jobs(
    redis: Redis,
    *,
    host: str | None = None,
    state: str | None = None,
    image: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[JobRecord]:
    """Jobs of every host (or one), newest first, at most ``limit``.

    ``state`` keeps one of STATES; ``image`` keeps jobs whose pushed reference contains that
    text (``app:1.2``, ``registry.example.com/team``); ``since`` keeps jobs queued after it.
    """
    hosts = [host] if host else sorted(get_hosts(redis))
    records: list[JobRecord] = []
    for name in hosts:
        for job_state, ids in _ids_by_state(redis, name):
            if state and job_state != state:
                continue
            jobs = Job.fetch_many(ids, connection=redis, serializer=JSONSerializer)
            records.extend(_record(job) for job in jobs if job is not None)
    if image:
        records = [r for r in records if image in _event_reference(r.event)]
    if since:
        floor = since if since.tzinfo else since.replace(tzinfo=UTC)
        records = [r for r in records if _newest_first_key(r) >= floor]
    records.sort(key=_newest_first_key, reverse=True)
    return records[:limit]


class JobActionError(Exception):
    """Raised when a job cannot be retried or cancelled; the message says why."""


def _state_name(state: object) -> str:
    return state.value if isinstance(state, JobStatus) else str(state)


def _fetch(redis: Redis, job_id: str) -> Job | None:
    """The job of that id, or None when it is unknown, expired or not a valid RQ job id."""
    try:
        return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except (NoSuchJobError, ValueError):
        return None


def _fetch_in_state(redis: Redis, job_id: str, allowed: tuple[JobStatus, ...], rule: str) -> Job:
    """The job, if it exists and is in one of the ``allowed`` states; else JobActionError."""
    job = _fetch(redis, job_id)
    if job is None:
        raise JobActionError(f"no job {job_id!r} (unknown or expired)")
    state = job.get_status()
    if state not in allowed:
        raise JobActionError(f"job {job_id} is {_state_name(state)}; {rule}")
    return job


def retry_job(redis: Redis, job_id: str) -> JobRecord:
    """Queue a failed job again on its host's queue. Raises JobActionError otherwise."""
    job = _fetch_in_state(
        redis,
        job_id,
        (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED),
        "only failed or cancelled jobs are retried",
    )
    state = job.get_status()
    queue = get_queue(redis, job.origin.removeprefix("podhook-"))
    try:
        if state is JobStatus.FAILED:
            queue.failed_job_registry.requeue(job)
        else:
            queue.enqueue_job(job)
    except (InvalidJobOperation, NoSuchJobError):
        # Someone else retried it between our look and our move.
        raise JobActionError(f"job {job_id} was retried meanwhile") from None
    return _record(job)


def retry_failed(redis: Redis, host: str | None = None) -> list[str]:
    """Queue every failed job (of one host, or all) again. Returns the retried ids."""
    retried = []
    for name in [host] if host else sorted(get_hosts(redis)):
        registry = get_queue(redis, name).failed_job_registry
        for job_id in registry.get_job_ids():
            try:
                registry.requeue(job_id)
            except (InvalidJobOperation, NoSuchJobError):
                continue  # retried by someone else meanwhile, or expired
            retried.append(job_id)
    return retried


def cancel_job(redis: Redis, job_id: str) -> JobRecord:
    """Cancel a queued or scheduled job; a started job is left alone (a restart may be under way).

    Raises JobActionError for an unknown job or one that is not waiting.
    """
    job = _fetch_in_state(
        redis,
        job_id,
        (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED),
        "only waiting jobs can be cancelled",
    )
    job.cancel()
    return _record(job)


def find_delivery(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """The audit entry of the delivery that queued ``job_id``, or None when it has expired."""
    for entry in audit.read(redis, kind="delivery", limit=audit.AUDIT_MAX_ENTRIES):
        if any(job.get("job") == job_id for job in entry.data.get("jobs", [])):
            return entry.data
    return None


def get_job(redis: Redis, job_id: str) -> JobRecord | None:
    """One job by id, or None when it is unknown or has expired."""
    job = _fetch(redis, job_id)
    return None if job is None else _record(job)
