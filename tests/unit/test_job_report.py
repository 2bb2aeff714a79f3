"""The job's report as one value: its stored shape read back exactly, records written before
some fields existed, the count per state, and which rows are retried."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from workers.events import make_event
from workers.report import (
    ContainerReport,
    HandoffInfo,
    JobReport,
    UpdateState,
    lasting_rows,
    retryable_rows,
)
from workers.update import UpdateOutcome

DIGEST = "sha256:" + "ab" * 32


def row(name: str, state: UpdateState, *, retryable: bool = False) -> ContainerReport:
    return ContainerReport(
        container_id=f"id-{name}",
        container_name=name,
        unit=f"container-{name}.service",
        image="registry.example.com/team/app:1.2",
        policy="registry",
        state=state,
        reason=f"{name} is {state.value}",
        old_image="1" * 64,
        new_image="2" * 64 if state is UpdateState.UPDATED else None,
        timings={"pulled": 0.4, "active": 1.5, "finished": 1.5},
        retryable=retryable,
    )


def converge_report(*rows: ContainerReport) -> JobReport:
    event = make_event(
        "registry.example.com",
        "team/app",
        "1.2",
        DIGEST,
        source="distribution",
        delivery="d-1",
        received_at=1_800_000_000.5,
    )
    return JobReport(
        host="web-1",
        kind="converge",
        reference=event.reference,
        job="converge-0123",
        event=event,
        started_at=1_800_000_001.0,
        finished_at=1_800_000_004.25,
        rows=rows,
    )


# What workers/jobs.py stored before the report was a value, for a push's job on its first
# attempt: the shape JobReport.to_dict must keep writing.
STORED_CONVERGE = {
    "host": "web-1",
    "kind": "converge",
    "reference": "registry.example.com/team/app:1.2",
    "event": {
        "registry": "registry.example.com",
        "repository": "team/app",
        "tag": "1.2",
        "digest": DIGEST,
        "source": "distribution",
        "delivery": "d-1",
        "received_at": 1_800_000_000.5,
    },
    "started_at": 1_800_000_001.0,
    "finished_at": 1_800_000_004.25,
    "containers": [
        {
            "container_id": "id-web",
            "container_name": "web",
            "unit": "container-web.service",
            "image": "registry.example.com/team/app:1.2",
            "policy": "registry",
            "state": "updated",
            "reason": "web is updated",
            "old_image": "1" * 64,
            "new_image": "2" * 64,
            "timings": {"pulled": 0.4, "active": 1.5, "finished": 1.5},
            "retryable": False,
        }
    ],
    "summary": {
        "updated": 1,
        "unchanged": 0,
        "pending": 0,
        "failed": 0,
        "rolled_back": 0,
        "skipped": 0,
        "handed_off": 0,
        "waiting": 0,
    },
    "job": "converge-0123",
}


def test_the_stored_shape_is_written_and_read_back_exactly():
    report = converge_report(row("web", UpdateState.UPDATED))
    assert report.to_dict() == STORED_CONVERGE
    # Through JSON, as Redis keeps it.
    stored = json.loads(json.dumps(report.to_dict()))
    assert JobReport.from_dict(stored) == report
    assert JobReport.from_dict(stored).to_dict() == stored
    assert JobReport.from_dict(STORED_CONVERGE).event == report.event
    assert JobReport.from_dict(STORED_CONVERGE).event.received_at == 1_800_000_000.5


@pytest.mark.parametrize(
    "stored",
    [
        # A reconcile that could not list the containers.
        {
            "host": "web-1",
            "kind": "reconcile",
            "reference": "*",
            "event": {},
            "started_at": 10.0,
            "finished_at": 11.0,
            "containers": [],
            "summary": {state.value: 0 for state in UpdateState},
            "error": "connecting to the systemd user bus: no such file",
            "job": "reconcile-1",
        },
        # A job whose restart a transient unit finished, completed by the worker that came back.
        {
            **STORED_CONVERGE,
            "containers": [
                {
                    **STORED_CONVERGE["containers"][0],
                    "reason": "restarted by podhook-handoff-1.service on the new image",
                }
            ],
            "handoff": {"transient_unit": "podhook-handoff-1.service", "units": ["web.service"]},
        },
        # Run in the CLI's own process: no job.
        {
            "host": "web-1",
            "kind": "reconcile",
            "reference": "*",
            "event": {},
            "started_at": 10.0,
            "finished_at": 11.0,
            "containers": [],
            "summary": {state.value: 0 for state in UpdateState},
        },
    ],
)
def test_every_shape_a_job_stores_round_trips(stored):
    assert JobReport.from_dict(stored).to_dict() == stored


def test_handoff_and_error_are_read():
    report = JobReport.from_dict(
        {
            **STORED_CONVERGE,
            "handoff": {"transient_unit": "podhook-handoff-1.service", "units": ["web.service"]},
        }
    )
    assert report.handoff == HandoffInfo("podhook-handoff-1.service", ("web.service",))
    down = JobReport.from_dict({"host": "web-1", "kind": "reconcile", "error": "Podman down"})
    assert down.error == "Podman down" and down.rows == () and down.failed


def test_a_record_written_before_kind_reference_and_summary_still_reads():
    # A push's job of an older worker: no kind, no reference, no summary, rows without ids,
    # policy or retryable.
    old_push = {
        "host": "web-1",
        "event": STORED_CONVERGE["event"],
        "started_at": 1.0,
        "finished_at": 2.0,
        "containers": [
            {
                "container_name": "web",
                "unit": "container-web.service",
                "image": "registry.example.com/team/app:1.2",
                "state": "rolled_back",
                "reason": "unit is failed; rolled back",
            }
        ],
        "job": "push-1",
    }
    report = JobReport.from_dict(old_push)
    assert report.kind == "converge"
    assert report.reference == "registry.example.com/team/app:1.2"
    assert report.summary["rolled_back"] == 1 and sum(report.summary.values()) == 1
    [only] = report.rows
    assert (only.container_id, only.policy, only.retryable) == ("", "", False)
    assert only.state is UpdateState.ROLLED_BACK and only.timings == {}
    assert report.lasting == (only,) and report.failed
    # Written again, it has today's shape.
    again = report.to_dict()
    assert again["kind"] == "converge" and again["summary"] == report.summary
    assert JobReport.from_dict(again) == report

    # A reconcile of that time: no push, no kind.
    old_reconcile = JobReport.from_dict({"host": "web-1", "event": {}, "containers": []})
    assert (old_reconcile.kind, old_reconcile.reference) == ("reconcile", "*")
    assert old_reconcile.event is None and old_reconcile.started_at is None
    assert "started_at" not in old_reconcile.to_dict()
    assert not old_reconcile.failed


def test_a_stored_summary_is_counted_again_from_the_rows():
    stored = {**STORED_CONVERGE, "summary": {"updated": 7}}
    assert JobReport.from_dict(stored).summary == STORED_CONVERGE["summary"]


def test_unknown_kinds_and_states_are_refused():
    with pytest.raises(ValueError, match="kind 'rebuild'"):
        JobReport.from_dict({**STORED_CONVERGE, "kind": "rebuild"})
    bad_row = {**STORED_CONVERGE["containers"][0], "state": "exploded"}
    with pytest.raises(ValueError, match="exploded"):
        JobReport.from_dict({**STORED_CONVERGE, "containers": [bad_row]})


def test_summary_counts_every_state():
    report = converge_report(
        row("a", UpdateState.UPDATED),
        row("b", UpdateState.UPDATED),
        row("c", UpdateState.FAILED, retryable=True),
        row("d", UpdateState.SKIPPED),
    )
    assert report.summary == {
        "updated": 2,
        "unchanged": 0,
        "pending": 0,
        "failed": 1,
        "rolled_back": 0,
        "skipped": 1,
        "handed_off": 0,
        "waiting": 0,
    }
    assert converge_report().summary == dict.fromkeys(report.summary, 0)


def test_retry_is_decided_per_row_by_its_flag_not_its_reason():
    passing = row("pull", UpdateState.FAILED, retryable=True)
    broken = row("restart", UpdateState.FAILED)
    rolled = row("roll", UpdateState.ROLLED_BACK)
    fine = row("ok", UpdateState.UPDATED)
    # The same words in a reason do not make a row retryable, nor take that away.
    lookalike = replace(broken, reason=passing.reason)
    report = converge_report(passing, broken, rolled, fine, lookalike)
    assert report.retryable == (passing,)
    assert report.lasting == (broken, rolled, lookalike)
    assert report.failed
    # A flag on a row that did not fail does not retry the job.
    flagged = replace(fine, retryable=True)
    assert converge_report(flagged).retryable == () and not converge_report(flagged).failed
    # Only passing failures: retried, nothing lasting.
    only_passing = converge_report(passing, fine)
    assert only_passing.retryable == (passing,) and only_passing.lasting == ()


def test_the_updaters_outcome_and_the_report_agree():
    rows = [
        row("pull", UpdateState.FAILED, retryable=True),
        row("restart", UpdateState.FAILED),
        row("roll", UpdateState.ROLLED_BACK),
        row("ok", UpdateState.UPDATED),
        row("odd", UpdateState.ROLLED_BACK, retryable=True),
    ]
    outcome = UpdateOutcome(list(rows))
    report = converge_report(*rows)
    assert outcome.retryable == list(report.retryable) == retryable_rows(rows)
    assert outcome.lasting == list(report.lasting) == lasting_rows(rows)


def test_a_row_round_trips():
    original = row("web", UpdateState.FAILED, retryable=True)
    assert ContainerReport.from_dict(original.to_dict()) == original
    assert ContainerReport.from_dict(json.loads(json.dumps(original.to_dict()))) == original
