"""The RQ job that applies a push on this host, wired to the real Podman, systemd and Redis."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis
from rq import get_current_job

from workers import audit, metrics
from workers.events import PushEvent
from workers.locks import RedisUnitLocks
from workers.logs import log_context
from workers.notify import notify_outcome
from workers.podman_runtime import ContainerRuntimeError, PodmanRuntime
from workers.queueing import redis_from_settings
from workers.report import FAILURE_STATES, summarize
from workers.settings import Settings, load_settings
from workers.systemd_units import DBusUnitManager, UnitError
from workers.update import UpdateOptions, Updater

log = logging.getLogger("podhook.worker")


class UpdateFailedError(Exception):
    """Raised by a job whose push left a container failed or rolled back."""


class TransientUpdateError(Exception):
    """Raised by a job that failed without changing anything; RQ retries it with backoff."""


def apply_push(event_data: dict[str, Any]) -> dict[str, Any]:
    """Apply one push on this host and return its report.

    The report (also saved in the job's meta as ``report`` before any failure is raised) holds
    the host, the event, one row per concerned container and a count per state. Rows in
    ``failed`` or ``rolled_back`` make the job fail with UpdateFailedError and no retry;
    failures that changed nothing (a pull that failed) raise TransientUpdateError, which RQ
    retries with backoff. Once the report is saved, its rows are counted in the metrics and
    the rows in ``notify_on`` states are notified (a passing failure only by the last attempt);
    neither ever fails the job.
    """
    event = PushEvent.from_dict(event_data)
    settings = load_settings()
    job = get_current_job()
    redis = job.connection if job is not None else redis_from_settings(settings)
    # The host whose queue the job came from; PODHOOK_HOST_ID may be unset in a worker
    # started with --host-id.
    host = (job.meta.get("host") if job is not None else None) or settings.host_id
    with log_context(
        source=event.source or None,
        delivery=event.delivery,
        job=job.id if job is not None else None,
        host=host,
        image=event.reference,
        digest=event.digest,
    ):
        return _apply(event, settings, job, redis, host)


def _report_unreachable(
    event: PushEvent,
    settings: Settings,
    job: Any,
    redis: Redis,
    host: str,
    started: float,
    error: Exception,
) -> None:
    """Record (and, on the last attempt, notify) a job that could not even list containers."""
    log.warning("cannot apply the push of %s: %s", event.reference, error)
    report: dict[str, Any] = {
        "host": host,
        "event": event.to_dict(),
        "started_at": started,
        "finished_at": time.time(),
        "containers": [],
        "summary": summarize([]),
        "error": str(error),
    }
    if job is not None:
        report["job"] = job.id
        job.meta["report"] = report
        job.save_meta()
    audit.record(redis, "outcome", report, settings.audit_retention)
    if job is None or (job.retries_left or 0) == 0:
        row = {
            "container_name": "(every container of this host)",
            "unit": None,
            "state": "failed",
            "reason": f"cannot apply the push: {error}",
        }
        sent = notify_outcome(settings, {**report, "containers": [row]})
        if sent is not None:
            metrics.record_notification(redis, host, sent)


def _apply(
    event: PushEvent, settings: Settings, job: Any, redis: Redis, host: str
) -> dict[str, Any]:
    log.info("applying the push of %s", event.reference)
    runtime = PodmanRuntime(settings.podman_url)
    started = time.time()
    try:
        updater = Updater(
            runtime,
            DBusUnitManager(settings.systemd_bus),
            # A lock lives as long as a job may, and a wait ends while the job can still report.
            RedisUnitLocks(redis, host, ttl=settings.job_timeout, wait=settings.job_timeout / 2),
            UpdateOptions(
                dry_run=settings.dry_run,
                rollback=settings.rollback,
                restart_timeout=settings.restart_timeout,
                settle_seconds=settings.settle_seconds,
                authfile=settings.authfile,
            ),
        )
        outcome = updater.apply(event)
    except (ContainerRuntimeError, UnitError) as error:
        _report_unreachable(event, settings, job, redis, host, started, error)
        raise TransientUpdateError(str(error)) from error
    finally:
        runtime.close()
    rows = [row.to_dict() for row in outcome.rows]
    report = {
        "host": host,
        "event": event.to_dict(),
        "started_at": started,
        "finished_at": time.time(),
        "containers": rows,
        "summary": summarize(outcome.rows),
    }
    for row in outcome.rows:
        log.log(
            logging.WARNING if row.state in FAILURE_STATES else logging.INFO,
            "container %s: %s: %s",
            row.container_name,
            row.state.value,
            row.reason,
            extra={"unit": row.unit, "container": row.container_name, "state": row.state.value},
        )
    if not outcome.rows:
        log.info("no container of this host runs %s", event.reference)
    if job is not None:
        report["job"] = job.id
        job.meta["report"] = report
        job.save_meta()
    audit.record(redis, "outcome", report, settings.audit_retention)
    metrics.record_outcomes(
        redis, host, outcome.rows, received_at=event.received_at, started_at=started
    )
    failures = [row for row in outcome.rows if row.state in FAILURE_STATES]
    lasting = [row for row in failures if row.reason not in outcome.transient]
    told = report
    if failures and not lasting and job is not None and (job.retries_left or 0) > 0:
        # RQ tries again: a passing failure is told once, by the attempt that gives up.
        told = {**report, "containers": [r for r in rows if r["reason"] not in outcome.transient]}
    sent = notify_outcome(settings, told)
    if sent is not None:
        metrics.record_notification(redis, host, sent)
    if lasting:
        if job is not None:
            job.retries_left = 0  # a restart that failed is not retried behind the user's back
        raise UpdateFailedError(
            "; ".join(f"{row.container_name}: {row.state.value}: {row.reason}" for row in lasting)
        )
    if failures:
        raise TransientUpdateError("; ".join(outcome.transient))
    return report
