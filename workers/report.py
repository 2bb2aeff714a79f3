"""Outcomes as data: one report row per container, with a state and the reason for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the state as its string value."""
        data = asdict(self)
        data["state"] = self.state.value
        return data


def summarize(rows: list[ContainerReport]) -> dict[str, int]:
    """Count rows by state, every state present in the result (zero when absent)."""
    counts = {state.value: 0 for state in UpdateState}
    for row in rows:
        counts[row.state.value] += 1
    return counts


# How `podman auto-update` prints each state in its UPDATED column.
PODMAN_UPDATED = {
    UpdateState.UPDATED: "true",
    UpdateState.UNCHANGED: "false",
    UpdateState.SKIPPED: "false",
    UpdateState.PENDING: "pending",
    UpdateState.FAILED: "failed",
    UpdateState.ROLLED_BACK: "rolled back",
    UpdateState.HANDED_OFF: "pending",
}
