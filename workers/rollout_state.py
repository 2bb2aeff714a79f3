"""A rollout as data: its waves, their hosts and states, its history, and the state machine
that moves it on (``advance``). Pure: workers/rollouts.py keeps rollouts in Redis."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from workers.update_policy import format_time


class RolloutState(StrEnum):
    """Where a rollout is."""

    ROLLING = "rolling"
    PAUSED = "paused"
    DONE = "done"
    HALTED = "halted"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"


ACTIVE_STATES = frozenset({RolloutState.ROLLING, RolloutState.PAUSED})


class HostState(StrEnum):
    """Where one host of a rollout is."""

    WAITING = "waiting"  # its wave has not opened
    UPDATING = "updating"  # its wave is open; its job has not said how it went
    UPDATED = "updated"  # runs the rollout's digest, verified
    FAILED = "failed"  # its update failed or was rolled back


@dataclass
class HostRecord:
    """One host of a wave: its state, why, and since when."""

    state: HostState
    reason: str = ""
    at: float = 0.0


@dataclass
class WaveRecord:
    """One wave of a rollout: its hosts and when it started, was all updated, soaks until and
    ended."""

    name: str
    selector: str
    hosts: dict[str, HostRecord] = field(default_factory=dict)
    started_at: float | None = None
    updated_at: float | None = None
    soak_until: float | None = None
    done_at: float | None = None
    promoted: bool = False

    def state(self) -> str:
        """``pending``, ``updating``, ``soaking``, ``done`` or ``failed``."""
        if any(h.state is HostState.FAILED for h in self.hosts.values()):
            return "failed"
        if self.done_at is not None:
            return "done"
        if self.started_at is None:
            return "pending"
        return "soaking" if self.updated_at is not None else "updating"


@dataclass
class Step:
    """Something that happened to a rollout: told in its history and notified."""

    at: float
    text: str


@dataclass
class Rollout:
    """One push of ``reference`` (to ``digest``) going out wave by wave."""

    id: str
    reference: str
    digest: str
    policy: str
    soak: float
    created_at: float
    state: RolloutState
    waves: list[WaveRecord]
    wave: int = 0  # the open wave (every earlier one is done)
    reason: str = ""
    steps: list[Step] = field(default_factory=list)

    # ---------------------------------------------------------------- reading

    def wave_of(self, host: str) -> int | None:
        """The index of ``host``'s wave, or None when it is not in the rollout."""
        for index, wave in enumerate(self.waves):
            if host in wave.hosts:
                return index
        return None

    def may_update(self, host: str) -> bool:
        """Whether ``host`` may update to the rollout's digest now: its wave is open and the
        rollout neither halted nor aborted."""
        index = self.wave_of(host)
        if index is None or self.state in (RolloutState.HALTED, RolloutState.ABORTED):
            return False
        return index <= self.wave and self.waves[index].started_at is not None

    def hold_reason(self, host: str) -> str:
        """Why ``host`` does not update yet, for its report row."""
        index = self.wave_of(host)
        name = f"wave {index + 1} of {len(self.waves)}" if index is not None else "no wave"
        if index is not None:
            name += f" ({self.waves[index].name})"
        head = f"rollout {self.id} of {self.digest[:19]}: this host is in {name}"
        if self.state is RolloutState.HALTED:
            return f"{head}; the rollout halted: {self.reason}"
        if self.state is RolloutState.ABORTED:
            return f"{head}; the rollout was aborted"
        current = self.waves[self.wave]
        what = f"wave {self.wave + 1} ({current.name}) is {current.state()}"
        if current.soak_until is not None and current.done_at is None:
            what += f" until {format_time(current.soak_until)}"
        if self.state is RolloutState.PAUSED:
            what += "; the rollout is paused"
        return f"{head}; {what}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        """Rebuild a rollout from ``to_dict`` output."""
        waves = [
            WaveRecord(
                **{
                    **w,
                    "hosts": {
                        h: HostRecord(HostState(r["state"]), r.get("reason", ""), r.get("at", 0))
                        for h, r in w["hosts"].items()
                    },
                }
            )
            for w in data["waves"]
        ]
        steps = [Step(**s) for s in data.get("steps", [])]
        return cls(
            **{
                **data,
                "state": RolloutState(data["state"]),
                "waves": waves,
                "steps": steps,
            }
        )


# -------------------------------------------------------------------- the state machine


def advance(rollout: Rollout, now: float) -> list[int]:
    """Move ``rollout`` on as far as it can at ``now``: halt it on a failed host, start a
    wave's soak once all its hosts are updated, open the next wave once the soak is over (or
    the wave was promoted), finish after the last. Returns the indexes of the waves it opened
    (their hosts are to be asked to converge). Records each step in ``rollout.steps``."""
    opened: list[int] = []
    while rollout.state is RolloutState.ROLLING:
        wave = rollout.waves[rollout.wave]
        # A host of an earlier wave that fails later (its retry, a reconcile) halts it too.
        failed = {
            h: r
            for opened in rollout.waves[: rollout.wave + 1]
            for h, r in opened.hosts.items()
            if r.state is HostState.FAILED
        }
        if failed:
            host, record = sorted(failed.items())[0]
            rollout.state = RolloutState.HALTED
            rollout.reason = f"{host}: {record.reason}"
            record_step(rollout, now, f"halted in wave {wave.name}: {rollout.reason}")
            break
        if any(r.state is not HostState.UPDATED for r in wave.hosts.values()):
            break
        if wave.updated_at is None:
            wave.updated_at = now
            # An empty wave (no host matched its selector) has nothing to soak.
            wave.soak_until = now + (rollout.soak if wave.hosts else 0)
            if wave.soak_until > now and rollout.wave + 1 < len(rollout.waves):
                record_step(
                    rollout,
                    now,
                    f"wave {wave.name} updated on {count_hosts(wave.hosts)}; soaking until "
                    f"{format_time(wave.soak_until)}",
                )
        last = rollout.wave + 1 >= len(rollout.waves)
        if not last and not wave.promoted and wave.soak_until is not None and now < wave.soak_until:
            break
        wave.done_at = now
        if last:
            rollout.state = RolloutState.DONE
            total = sum(len(w.hosts) for w in rollout.waves)
            record_step(rollout, now, f"done: {count_hosts(range(total))} updated")
            break
        rollout.wave += 1
        opened.append(rollout.wave)
        open_wave(rollout, rollout.wave, now)
    return opened


def open_wave(rollout: Rollout, index: int, now: float) -> None:
    """Open wave ``index`` at ``now``: its waiting hosts may update."""
    wave = rollout.waves[index]
    wave.started_at = now
    for record in wave.hosts.values():
        if record.state is HostState.WAITING:
            record.state, record.at = HostState.UPDATING, now
    record_step(
        rollout, now, f"wave {wave.name} started on {count_hosts(wave.hosts)}: {_names(wave)}"
    )


def record_step(rollout: Rollout, now: float, text: str) -> None:
    rollout.steps.append(Step(now, text))


def count_hosts(items: Any) -> str:
    """``1 host``, ``3 hosts``."""
    n = len(items)
    return f"{n} host" if n == 1 else f"{n} hosts"


def _names(wave: WaveRecord) -> str:
    return ", ".join(sorted(wave.hosts)) or "(none)"
