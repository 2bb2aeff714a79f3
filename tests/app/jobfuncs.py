"""Job functions for tests that need real RQ jobs in known end states, without Podman."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from workers import audit


def _report(event: dict[str, Any], state: str, reason: str) -> dict[str, Any]:
    return {
        "host": get_current_job().meta["host"],
        "event": event,
        "started_at": 1.0,
        "finished_at": 2.0,
        "containers": [
            {
                "container_id": "c0ffee",
                "container_name": "web",
                "unit": "container-web.service",
                "image": f"{event['registry']}/{event['repository']}:{event['tag']}",
                "policy": "registry",
                "state": state,
                "reason": reason,
                "old_image": "1" * 64,
                "new_image": "2" * 64,
                "timings": {"pulled": 0.4, "active": 1.5, "finished": 1.5},
            }
        ],
        "summary": {state: 1},
    }


def _save(report: dict[str, Any]) -> None:
    """Keep the report where workers/jobs.py keeps it: job meta and the audit trail."""
    job = get_current_job()
    report["job"] = job.id
    job.meta["report"] = report
    job.save_meta()
    audit.record(job.connection, "outcome", report, retention_seconds=3600)


def finish_updated(host: str, reference: str) -> dict[str, Any]:
    """Finish like a job that updated one container."""
    event = get_current_job().meta["event"]
    report = _report(event, "updated", "restarted container-web.service on the new image")
    _save(report)
    return report


def fail_rolled_back(host: str, reference: str) -> None:
    """Fail like a job whose new image did not come up."""
    event = get_current_job().meta["event"]
    _save(_report(event, "rolled_back", "unit is failed; rolled back"))
    get_current_job().retries_left = 0
    raise RuntimeError("web: rolled_back: restarting 'container-web.service': unit is failed")
