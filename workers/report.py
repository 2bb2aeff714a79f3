"""Outcomes as data: one report row per container, with a state and the reason for it, and
the job's report that holds them, the one value every reader takes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from workers.events import PushEvent


class UpdateState(StrEnum):
    """What a push did to one container."""

    UPDATED = "updated"
    UNCHANGED = "unchanged"
    PENDING = "pending"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"
    # The unit holds this worker (or its Redis): its restart runs outside it, in a transient
    # unit, and the row is completed when that is over.
    HANDED_OFF = "handed_off"
    # The update waits: for its wave of a rollout, a maintenance window or the image's minimum
    # age (``until`` says when it looks again, when that is known). An update waiting for an
    # approval is ``pending``, as a dry run's is: available, not applied.
    WAITING = "waiting"


# States that make a job fail in its record: the push did not end with the new image running.
FAILURE_STATES = frozenset({UpdateState.FAILED, UpdateState.ROLLED_BACK})


@dataclass(frozen=True)
class ContainerReport:
    """One container's outcome for one push.

    ``old_image`` and ``new_image`` are image ids; ``timings`` holds seconds since the job
    started for each step reached (``pulled``, ``restarted``, ``active``, ``finished``);
    ``retryable`` marks a failure that changed nothing, worth another attempt.
    """

    container_id: str
    container_name: str
    unit: str | None
    image: str
    policy: str
    state: UpdateState
    reason: str
    old_image: str | None = None
    new_image: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # A failure that changed nothing (a pull that failed, a registry that does not serve the
    # pushed digest yet): another attempt may succeed. Restarts that failed are never retried.
    retryable: bool = False
    # A waiting row: when the update looks again (Unix time), if that is known.
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the state as its string value; ``from_dict`` reads it back."""
        data = asdict(self)
        data["state"] = self.state.value
        if self.until is None:
            del data["until"]  # only waiting rows have one
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerReport:
        """Rebuild a row from ``to_dict`` output, or from a row stored before some fields
        existed (a missing id, image or policy is empty, a missing ``retryable`` false).

        Raises KeyError without a ``state`` and ValueError for a state that is not an
        UpdateState.
        """
        return cls(
            container_id=str(data.get("container_id") or ""),
            container_name=str(data.get("container_name") or ""),
            unit=data.get("unit"),
            image=str(data.get("image") or ""),
            policy=str(data.get("policy") or ""),
            state=UpdateState(data["state"]),
            reason=str(data.get("reason") or ""),
            old_image=data.get("old_image"),
            new_image=data.get("new_image"),
            timings=dict(data.get("timings") or {}),
            retryable=bool(data.get("retryable", False)),
            until=data.get("until"),
        )


def summarize(rows: Iterable[ContainerReport]) -> dict[str, int]:
    """Count rows by state, every state present in the result (zero when absent)."""
    counts = {state.value: 0 for state in UpdateState}
    for row in rows:
        counts[row.state.value] += 1
    return counts


# Whether a job is tried again is decided here, per row, from its state and ``retryable``
# flag: the updater's outcome and the job's report both ask these two functions.
def retryable_rows(rows: Iterable[ContainerReport]) -> list[ContainerReport]:
    """Failed rows that changed nothing: another attempt may succeed."""
    return [r for r in rows if r.state is UpdateState.FAILED and r.retryable]


def lasting_rows(rows: Iterable[ContainerReport]) -> list[ContainerReport]:
    """Failed or rolled-back rows that another attempt must not repeat on its own."""
    return [r for r in rows if r.state in FAILURE_STATES and not r.retryable]


JobKind = Literal["converge", "reconcile"]
JOB_KINDS: tuple[JobKind, ...] = ("converge", "reconcile")
# The reference of a reconcile: every labeled container of the host.
EVERY_REFERENCE = "*"


@dataclass(frozen=True)
class HandoffInfo:
    """The transient unit that restarted units holding the worker (or its Redis), and those
    units."""

    transient_unit: str
    units: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"transient_unit": self.transient_unit, "units": list(self.units)}


@dataclass(frozen=True)
class JobReport:
    """What one attempt of a job did on one host: the value the updater's rows become, saved
    in the job's meta (``report``) and the audit trail, and read back by the API, the CLI, the
    page, notifications and metrics.

    ``kind`` is ``converge`` (one ``reference``, asked by ``event``, the push, when one did) or
    ``reconcile`` (``reference`` ``*``: every labeled container). ``started_at`` and
    ``finished_at`` are Unix times. ``error`` says why the job could not even list the
    containers (then ``rows`` is empty); ``handoff`` names the transient unit that restarted
    units holding the worker, once the worker has completed the record.
    """

    host: str
    kind: JobKind
    reference: str
    job: str | None = None
    event: PushEvent | None = None
    started_at: float | None = None
    finished_at: float | None = None
    rows: tuple[ContainerReport, ...] = ()
    error: str | None = None
    handoff: HandoffInfo | None = None

    @property
    def summary(self) -> dict[str, int]:
        """Rows per state, every state present."""
        return summarize(self.rows)

    @property
    def retryable(self) -> tuple[ContainerReport, ...]:
        """Failed rows that changed nothing: another attempt may succeed."""
        return tuple(retryable_rows(self.rows))

    @property
    def lasting(self) -> tuple[ContainerReport, ...]:
        """Failed or rolled-back rows that another attempt must not repeat on its own."""
        return tuple(lasting_rows(self.rows))

    @property
    def failed(self) -> bool:
        """Whether the job could not list the containers, or a row failed or rolled back."""
        return self.error is not None or any(row.state in FAILURE_STATES for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape kept in job meta and the audit trail; ``from_dict`` reads it back.

        ``job``, ``error`` and ``handoff`` appear only when known, ``started_at`` and
        ``finished_at`` only when set (records written before they existed lack them).
        """
        data: dict[str, Any] = {
            "host": self.host,
            "kind": self.kind,
            "reference": self.reference,
            "event": self.event.to_dict() if self.event is not None else {},
        }
        if self.started_at is not None:
            data["started_at"] = self.started_at
        if self.finished_at is not None:
            data["finished_at"] = self.finished_at
        data["containers"] = [row.to_dict() for row in self.rows]
        data["summary"] = self.summary
        if self.error is not None:
            data["error"] = self.error
        if self.job is not None:
            data["job"] = self.job
        if self.handoff is not None:
            data["handoff"] = self.handoff.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobReport:
        """Rebuild a report from ``to_dict`` output, or from a record written before some of
        its fields existed: without ``kind``, a report with a push is a converge and one
        without a reconcile; without ``reference``, the push's (``*`` for a reconcile). The
        stored ``summary`` is not read: it is counted again from the rows.

        Raises ValueError for an unknown kind or row state, KeyError for a row without one.
        """
        raw_event = data.get("event") or {}
        event = _stored_event(raw_event) if raw_event else None
        reference = data.get("reference")
        kind = data.get("kind") or ("converge" if event is not None or reference else "reconcile")
        if kind not in JOB_KINDS:
            raise ValueError(f"report of kind {kind!r}: expected one of {list(JOB_KINDS)}")
        if not reference:
            reference = event.reference if event is not None else EVERY_REFERENCE
        raw_handoff = data.get("handoff")
        return cls(
            host=str(data.get("host") or ""),
            kind=kind,
            reference=str(reference),
            job=data.get("job"),
            event=event,
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            rows=tuple(ContainerReport.from_dict(row) for row in data.get("containers") or ()),
            error=data.get("error"),
            handoff=HandoffInfo(
                transient_unit=str(raw_handoff.get("transient_unit") or ""),
                units=tuple(raw_handoff.get("units") or ()),
            )
            if raw_handoff
            else None,
        )


def _stored_event(data: Mapping[str, Any]) -> PushEvent:
    """The push a report names, as it was stored: validated when it was received, so read back
    as is (``PushEvent.from_dict`` would normalize it again)."""
    return PushEvent(
        registry=str(data.get("registry") or ""),
        repository=str(data.get("repository") or ""),
        tag=str(data.get("tag") or ""),
        digest=data.get("digest"),
        source=str(data.get("source") or ""),
        delivery=data.get("delivery"),
        received_at=data.get("received_at"),
    )


# How `podman auto-update` prints each state in its UPDATED column.
PODMAN_UPDATED = {
    UpdateState.UPDATED: "true",
    UpdateState.UNCHANGED: "false",
    UpdateState.SKIPPED: "false",
    UpdateState.PENDING: "pending",
    UpdateState.FAILED: "failed",
    UpdateState.ROLLED_BACK: "rolled back",
    UpdateState.HANDED_OFF: "pending",
    UpdateState.WAITING: "pending",
}
