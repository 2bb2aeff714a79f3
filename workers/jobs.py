"""The RQ job that applies a push on this host, wired to the real Podman, systemd and Redis."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from redis import Redis
from rq import get_current_job

from workers import audit
from workers.events import PushEvent
from workers.locks import RedisUnitLocks
from workers.podman_runtime import PodmanRuntime
from workers.report import FAILURE_STATES, summarize
from workers.settings import load_settings
from workers.systemd_units import DBusUnitManager
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
    retries with backoff.
    """
    event = PushEvent.from_dict(event_data)
    settings = load_settings()
    job = get_current_job()
    redis = job.connection if job is not None else Redis.from_url(settings.redis_url or "")
    host = settings.host_id or socket.gethostname()
    runtime = PodmanRuntime(settings.podman_url)
    try:
        updater = Updater(
            runtime,
            DBusUnitManager(settings.systemd_bus),
            RedisUnitLocks(redis, host),
            UpdateOptions(
                dry_run=settings.dry_run,
                rollback=settings.rollback,
                restart_timeout=settings.restart_timeout,
                settle_seconds=settings.settle_seconds,
                authfile=settings.authfile,
            ),
        )
        started = time.time()
        outcome = updater.apply(event)
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
        log.info(
            "host=%s image=%s digest=%s unit=%s container=%s state=%s reason=%s",
            host,
            event.reference,
            event.digest or "-",
            row.unit or "-",
            row.container_name,
            row.state.value,
            row.reason,
        )
    if job is not None:
        report["job"] = job.id
        job.meta["report"] = report
        job.save_meta()
    audit.record(redis, "outcome", report, settings.audit_retention)
    failures = [row for row in outcome.rows if row.state in FAILURE_STATES]
    lasting = [row for row in failures if row.reason not in outcome.transient]
    if lasting:
        if job is not None:
            job.retries_left = 0  # a restart that failed is not retried behind the user's back
        raise UpdateFailedError(
            "; ".join(f"{row.container_name}: {row.state.value}: {row.reason}" for row in lasting)
        )
    if failures:
        raise TransientUpdateError("; ".join(outcome.transient))
    return report
