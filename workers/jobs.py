"""The RQ jobs of a host: converge one reference, reconcile every container; wired to the real
Podman, systemd and Redis, each saving one report read by the CLI, the API, the page,
notifications and metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from workers import audit, metrics
from workers.attempts import RedisAttemptJournal
from workers.desired import get_desired, record_rollback
from workers.events import PushEvent, make_event
from workers.gates import FleetGate
from workers.handoff import (
    HANDOFF_DELAY,
    Handoff,
    TransientUnitHandoff,
    claim_handoff,
    handoff_rows,
    pending_handoffs,
    worker_identity,
)
from workers.inventory import get_inventory, running_digest
from workers.locks import RedisUnitLocks, UnitLocks
from workers.logs import log_context
from workers.notify import notify_outcome
from workers.podman_runtime import ContainerRuntimeError, PodmanRuntime
from workers.queueing import (
    JobOptions,
    finish_work,
    job_is_alive,
    reconcile_soon,
    redis_from_settings,
    release_reconcile,
    release_work,
    request_convergence,
    start_work,
)
from workers.reference import parse_reference
from workers.report import (
    EVERY_REFERENCE,
    FAILURE_STATES,
    ContainerReport,
    HandoffInfo,
    JobReport,
    UpdateState,
    lasting_rows,
)
from workers.settings import Settings, load_settings
from workers.systemd_units import DBusUnitManager, UnitError
from workers.update import REGISTRY_POLICIES, UpdateOptions, UpdateOutcome, Updater

log = logging.getLogger("podhook.worker")

# How often one job looks again because pushes came while it worked, before it leaves the
# rest to a job of its own (a hint then queues one): bounds a job under a stream of pushes.
MAX_LOOKS = 5


class UpdateFailedError(Exception):
    """Raised by a job whose work left a container failed or rolled back."""


class TransientUpdateError(Exception):
    """Raised by a job that failed without changing anything; RQ retries it with backoff."""


def _context(settings: Settings) -> tuple[Any, Redis]:
    job = get_current_job()
    return job, job.connection if job is not None else redis_from_settings(settings)


def _retries_left(job: Any) -> bool:
    """Whether RQ will try ``job`` again after it fails."""
    return job is not None and (job.retries_left or 0) > 0


def build_updater(
    settings: Settings,
    runtime: PodmanRuntime,
    locks: UnitLocks,
    *,
    redis: Redis | None = None,
    job_id: str | None = None,
    host: str | None = None,
) -> Updater:
    """An Updater on the real systemd bus of the settings, with ``runtime`` and ``locks``.

    With ``job_id`` (a queued job), restarts of units that hold this worker or its Redis are
    handed to a transient unit and recorded in ``redis`` for the worker to complete. With
    ``redis``, each restart is journaled there first, so that an attempt cut short is finished
    by the next one, and updates pass the fleet's gate (rollouts, windows, ages, approvals) of
    ``host`` (this host when None)."""
    units = DBusUnitManager(settings.systemd_bus)
    handoff = None
    if job_id is not None:
        identity = worker_identity(settings)
        handoff = TransientUnitHandoff(units, settings, identity, redis, settings.host_id, job_id)
    journal = RedisAttemptJournal(redis, settings.host_id) if redis is not None else None
    gate = (
        FleetGate(redis, settings, host or settings.host_id, registry_lookup(settings))
        if redis is not None
        else None
    )
    return Updater(
        runtime,
        units,
        locks,
        UpdateOptions.from_settings(settings),
        handoff,
        journal,
        job_id or "inline",
        gate,
    )


def _event_for(reference: str, digest: str | None) -> PushEvent:
    ref = parse_reference(reference)
    return make_event(ref.registry, ref.repository, ref.tag or "latest", digest)


def converge(host: str, reference: str) -> dict[str, Any]:
    """Make this host's containers of ``reference`` run what the reference names now.

    Reads the desired state (the last push's digest, if it named one) when it runs, not the
    push that queued it; looks again when a push came while it worked. Returns the report
    (also in the job's meta as ``report``, and in the audit trail). Rows that failed without
    changing anything raise TransientUpdateError, which RQ retries with backoff; restarts that
    failed or rolled back raise UpdateFailedError and are not retried.
    """
    settings = load_settings()
    job, redis = _context(settings)
    job_id = job.id if job is not None else "inline"
    with log_context(job=job_id if job is not None else None, host=host, image=reference):
        start_work(redis, host, reference, job_id, ttl=settings.job_timeout)
        outcome: UpdateOutcome | None = None
        report: JobReport | None = None
        try:
            for _ in range(MAX_LOOKS):
                desired = get_desired(redis, reference)
                digest = desired.digest if desired else None
                event = _event_for(reference, digest)
                unchanged = _unchanged_by_inventory(settings, redis, host, reference, digest)
                if unchanged is not None:
                    outcome = UpdateOutcome(rows=unchanged)
                    report = _report_rows(settings, job, redis, host, event, time.time(), unchanged)
                    FleetGate(redis, settings, host, None).settled(reference, digest, unchanged)
                else:
                    outcome, report = _run(
                        settings,
                        job,
                        redis,
                        host,
                        event,
                        lambda updater, d=digest: updater.converge(reference, d),
                    )
                if outcome.lasting:
                    # A restart failed (and was rolled back): another look would restart the
                    # same image again. The next push, or the operator, decides.
                    if desired is not None:
                        record_rollback(redis, host, desired)
                    release_work(redis, host, reference, job_id)
                    break
                retrying = False
                if outcome.retryable:
                    latest = get_desired(redis, reference)
                    if latest and desired and latest.generation != desired.generation:
                        continue  # a newer push came: look at it now rather than back off
                    retrying = _retries_left(job)
                if not finish_work(redis, host, reference, job_id, retrying=retrying):
                    break
            else:
                # Pushes kept coming: what they ask is left to a job of its own, queued now.
                release_work(redis, host, reference, job_id)
                request_convergence(redis, host, reference, JobOptions.from_settings(settings))
        except BaseException:
            # RQ's next attempt, if any, holds the work (hints join it); else nobody does.
            if _retries_left(job):
                finish_work(redis, host, reference, job_id, retrying=True)
            else:
                release_work(redis, host, reference, job_id)
            raise
        assert outcome is not None and report is not None
        return _conclude(settings, job, redis, report)


def reconcile(
    host: str, dry_run: bool | None = None, rollback: bool | None = None
) -> dict[str, Any]:
    """Check every labeled container of this host against its registry and update those
    behind, as `podman auto-update` does (``dry_run`` and ``rollback`` override the settings).
    Returns the report, like ``converge``."""
    overrides = {"dry_run": dry_run, "rollback": rollback}
    settings = load_settings(overrides={k: v for k, v in overrides.items() if v is not None})
    job, redis = _context(settings)
    with log_context(job=job.id if job is not None else None, host=host):
        release_reconcile(redis, host)
        _, report = _run(
            settings,
            job,
            redis,
            host,
            None,
            lambda updater: updater.reconcile(registry_lookup(settings)),
        )
        return _conclude(settings, job, redis, report)


def registry_lookup(settings: Settings) -> Any:
    """The digest lookup the reconcile uses: a manifest HEAD with the container's authfile."""

    from workers.authfile import lookup_credentials  # noqa: PLC0415
    from workers.registry_client import (  # noqa: PLC0415
        RegistryCredentials,
        get_manifest_digest,
    )

    def lookup(image_reference: str, authfile: str | None) -> str:
        found = lookup_credentials(parse_reference(image_reference).name, authfile)
        credentials = (
            RegistryCredentials(found.username, found.password, found.identity_token)
            if found is not None
            else None
        )
        return get_manifest_digest(image_reference, credentials=credentials)

    return lookup


def apply_push(event_data: dict[str, Any]) -> dict[str, Any]:
    """Jobs queued before convergence: converge the event's reference on this host."""
    event = PushEvent.from_dict(event_data)
    job = get_current_job()
    host = (job.meta.get("host") if job is not None else None) or load_settings().host_id
    return converge(host, event.reference)


def _run(
    settings: Settings,
    job: Any,
    redis: Redis,
    host: str,
    event: PushEvent | None,
    act: Any,
) -> tuple[UpdateOutcome, JobReport]:
    runtime = PodmanRuntime(settings.podman_url)
    started = time.time()
    try:
        # A lock lives as long as a job may, and a wait ends while the job can still report.
        locks = RedisUnitLocks(
            redis,
            host,
            ttl=settings.job_timeout,
            wait=settings.job_timeout / 2,
            holder=job.id if job is not None else None,
            holder_alive=lambda holder: job_is_alive(redis, holder),
        )
        updater = build_updater(
            settings,
            runtime,
            locks,
            redis=redis,
            job_id=job.id if job is not None else None,
            host=host,
        )
        outcome = act(updater)
    except (ContainerRuntimeError, UnitError) as error:
        _report_unreachable(settings, job, redis, host, event, started, error)
        raise TransientUpdateError(str(error)) from error
    finally:
        runtime.close()
    return outcome, _report_rows(settings, job, redis, host, event, started, outcome.rows)


def _report_rows(
    settings: Settings,
    job: Any,
    redis: Redis,
    host: str,
    event: PushEvent | None,
    started: float,
    rows: list[ContainerReport],
) -> JobReport:
    """Log the rows of a job, save its report and count its outcomes; return the report."""
    report = _new_report(host, job, event, started, rows)
    for row in report.rows:
        log.log(
            logging.WARNING if row.state in FAILURE_STATES else logging.INFO,
            "container %s: %s: %s",
            row.container_name,
            row.state.value,
            row.reason,
            extra={"unit": row.unit, "container": row.container_name, "state": row.state.value},
        )
    _save_report(settings, job, redis, report)
    metrics.record_outcomes(redis, report)
    return report


def _unchanged_by_inventory(
    settings: Settings, redis: Redis, host: str, reference: str, digest: str | None
) -> list[ContainerReport] | None:
    """The rows of a job that changes nothing, read from the inventory this host's worker
    publishes (kept current from Podman's events) instead of asking Podman: when every
    container of ``reference`` already runs ``digest``, each is ``unchanged``. None when
    Podman must be asked: no digest, an inventory too old, a container behind or not a
    plain registry container, an update of this host cut short (its journal decides) or one
    handed to a transient unit that may still roll back."""
    if not digest:
        return None
    members = running_digest(
        get_inventory(redis, host), reference, digest, settings.inventory_max_age
    )
    if members is None or any(
        m.get("policy") not in REGISTRY_POLICIES or not m.get("unit") for m in members
    ):
        return None
    if RedisAttemptJournal(redis, host).unfinished() or pending_handoffs(redis, host):
        return None
    return [
        ContainerReport(
            container_id=m["id"],
            container_name=m["name"],
            unit=m["unit"],
            image=m["image"],
            policy=m["policy"],
            state=UpdateState.UNCHANGED,
            reason=f"already runs {digest}",
            old_image=m["image_id"],
            new_image=m["image_id"],
            timings={"finished": 0.0},
        )
        for m in members
    ]


def _new_report(
    host: str,
    job: Any,
    event: PushEvent | None,
    started: float,
    rows: list[ContainerReport],
) -> JobReport:
    """A job's report: what it converged (a push's reference, or ``*`` for a reconcile), when,
    and one row per container."""
    return JobReport(
        host=host,
        kind="converge" if event is not None else "reconcile",
        reference=event.reference if event is not None else EVERY_REFERENCE,
        job=job.id if job is not None else None,
        event=event,
        started_at=started,
        finished_at=time.time(),
        rows=tuple(rows),
    )


def _save_report(settings: Settings, job: Any, redis: Redis, report: JobReport) -> None:
    """Keep the report in the job's meta (where readers look first) and the audit trail."""
    stored = report.to_dict()
    if job is not None:
        job.meta["report"] = stored
        job.save_meta()
    audit.record(redis, "outcome", stored, settings.audit_retention)


def _conclude(
    settings: Settings,
    job: Any,
    redis: Redis,
    report: JobReport,
) -> dict[str, Any]:
    """Notify, then end the job as its rows say: failed, retried, or done. Returns the report
    as stored (RQ keeps a job's result as JSON)."""
    lasting, retryable = report.lasting, report.retryable
    told = report
    if retryable and not lasting and _retries_left(job):
        # RQ tries again: a passing failure is told once, by the attempt that gives up; the
        # other rows (updated, say) are told now.
        told = replace(report, rows=tuple(r for r in report.rows if r not in retryable))
    sent = notify_outcome(settings, told)
    if sent is not None:
        metrics.record_notification(redis, report.host, sent)
    if lasting:
        if job is not None:
            job.retries_left = 0  # a restart that failed is not retried behind the user's back
        raise UpdateFailedError(
            "; ".join(f"{row.container_name}: {row.state.value}: {row.reason}" for row in lasting)
        )
    if retryable:
        if not _retries_left(job):
            # A service stayed down through every retry: the reconcile picks it up soon.
            reconcile_soon(redis, report.host, settings.reconcile_interval)
        raise TransientUpdateError("; ".join(row.reason for row in retryable))
    return report.to_dict()


def _report_unreachable(
    settings: Settings,
    job: Any,
    redis: Redis,
    host: str,
    event: PushEvent | None,
    started: float,
    error: Exception,
) -> None:
    """Record (and, on the last attempt, notify) a job that could not even list containers."""
    log.warning("cannot reach Podman or systemd: %s", error)
    report = replace(_new_report(host, job, event, started, []), error=str(error))
    _save_report(settings, job, redis, report)
    if not _retries_left(job):
        reconcile_soon(redis, host, settings.reconcile_interval)
        sent = notify_outcome(settings, report)
        if sent is not None:
            metrics.record_notification(redis, host, sent)


# A transient unit's states while it still works.
_UNDERWAY = frozenset({"activating", "active", "deactivating", "reloading"})


def finish_handoffs(settings: Settings, redis: Redis) -> int:
    """Complete the records of this host's handed-off restarts whose transient unit is over.

    Each container's row is read from what it runs now (the new image: updated; the old one:
    rolled back; else failed), put in the job's report, the audit trail and metrics, and
    notified; a job whose rows failed is moved to the failed jobs. Handoffs still underway
    are left for a later call. Returns how many were completed. Raises ContainerRuntimeError
    or UnitError when Podman or systemd cannot be asked.
    """
    pending = [
        h
        for h in pending_handoffs(redis, settings.host_id)
        if time.time() - h.started_at > HANDOFF_DELAY
    ]
    if not pending:
        return 0
    units = DBusUnitManager(settings.systemd_bus)
    runtime = PodmanRuntime(settings.podman_url, timeout=30)
    locks = RedisUnitLocks(redis, settings.host_id)
    completed = 0
    try:
        for handoff in pending:
            state = units.get_state(handoff.transient_unit)
            if state.active_state in _UNDERWAY:
                continue
            running = {c.name: c.image_id for c in runtime.list_autoupdate_containers()}
            if not claim_handoff(redis, handoff):
                continue  # another worker process of this host completes it
            rows = handoff_rows(handoff, running, transient_failed=state.active_state == "failed")
            _complete_handoff(settings, redis, handoff, rows)
            units.reset_failed(handoff.transient_unit)
            for unit in handoff.units:
                locks.release_kept(unit)
            completed += 1
    finally:
        runtime.close()
    return completed


def _complete_handoff(
    settings: Settings, redis: Redis, handoff: Handoff, rows: list[ContainerReport]
) -> None:
    """Put a handoff's final rows in its job's report and tell everyone who reads reports."""
    try:
        job: Job | None = Job.fetch(handoff.job, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        job = None
    stored = job.meta.get("report") if job is not None else None
    if stored:
        begun = JobReport.from_dict(stored)
    else:
        begun = _new_report(handoff.host, None, None, handoff.started_at, [])
    # The handoff's final rows replace the rows the job saved for those containers.
    final = {row.container_id: row for row in rows}
    merged = [final.pop(row.container_id, row) for row in begun.rows]
    merged.extend(final.values())
    report = replace(
        begun,
        job=handoff.job,
        rows=tuple(merged),
        finished_at=time.time(),
        handoff=HandoffInfo(handoff.transient_unit, tuple(handoff.units)),
    )
    lasting = lasting_rows(rows)
    log.log(
        logging.WARNING if lasting else logging.INFO,
        "handoff %s over: %s",
        handoff.transient_unit,
        "; ".join(f"{row.container_name}: {row.state.value}" for row in rows),
    )
    if job is not None:
        job.meta["report"] = report.to_dict()
        job.save_meta()
        if lasting:
            with redis.pipeline() as pipe:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                FinishedJobRegistry(job.origin, connection=redis).remove(job, pipeline=pipe)
                FailedJobRegistry(job.origin, connection=redis).add(
                    job,
                    ttl=settings.result_ttl,
                    exc_string="; ".join(f"{r.container_name}: {r.reason}" for r in lasting),
                    pipeline=pipe,
                )
                pipe.execute()
    audit.record(redis, "outcome", report.to_dict(), settings.audit_retention)
    if begun.kind == "converge":
        digest = begun.event.digest if begun.event is not None else None
        FleetGate(redis, settings, handoff.host, None).settled(begun.reference, digest, rows)
    # Metrics and notifications are about the rows the handoff completed, the others were
    # counted and told when the job saved them.
    completed = replace(report, rows=tuple(rows))
    metrics.record_outcomes(redis, completed)
    sent = notify_outcome(settings, completed)
    if sent is not None:
        metrics.record_notification(redis, handoff.host, sent)
