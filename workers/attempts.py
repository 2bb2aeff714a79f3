"""The restart journal: what an update of a unit was doing, written before each step.

An update can be cut at any point (work-horse or worker killed, out of memory, reboot, job
timeout). Before it restarts a unit it records the unit's containers with their old and new
images and the phase (``restarting``, ``verifying``, ``rolling_back``); it clears the record once
the unit's outcome is decided. A later attempt that finds a record finishes that update:
verifies the unit and keeps the new image when it is healthy, or rolls it back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from redis import Redis

ATTEMPTS_KEY = "podhook:attempts:{host}"


@dataclass
class Attempt:
    """An update of one unit in progress: its containers (name, id, image reference, policy,
    ``old`` and ``new`` image ids), the job doing it and the step it reached."""

    unit: str
    job: str
    phase: str
    containers: list[dict[str, Any]]
    started_at: float = field(default_factory=time.time)

    @property
    def references(self) -> set[str]:
        """The image references of the unit's containers."""
        return {c["image"] for c in self.containers}

    def to_json(self) -> str:
        """The record as stored."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Attempt:
        """A record read back."""
        return cls(**json.loads(text))


class AttemptJournal(Protocol):
    """Where updates in progress are recorded, durably, per host."""

    def record(self, attempt: Attempt) -> None:
        """Write (or overwrite) the unit's record."""
        ...

    def clear(self, unit: str) -> None:
        """Remove the unit's record: its outcome is decided."""
        ...

    def unfinished(self) -> list[Attempt]:
        """Every recorded update of this host that did not decide its outcome."""
        ...


class RedisAttemptJournal:
    """The journal in a Redis hash per host (unit → record), written before each step."""

    def __init__(self, redis: Redis, host: str) -> None:
        self.redis = redis
        self.key = ATTEMPTS_KEY.format(host=host)

    def record(self, attempt: Attempt) -> None:
        """Write the unit's record (one round trip; AOF makes it survive a restart)."""
        self.redis.hset(self.key, attempt.unit, attempt.to_json())

    def clear(self, unit: str) -> None:
        """Remove the unit's record."""
        self.redis.hdel(self.key, unit)

    def unfinished(self) -> list[Attempt]:
        """Every record of the host."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self.key)  # type: ignore[assignment]
        return [Attempt.from_json(value) for value in raw.values()]


class MemoryAttemptJournal:
    """A journal in this process only: for runs without Redis (`podhook reconcile` here)."""

    def __init__(self) -> None:
        self.attempts: dict[str, Attempt] = {}

    def record(self, attempt: Attempt) -> None:
        """Keep the unit's record."""
        self.attempts[attempt.unit] = attempt

    def clear(self, unit: str) -> None:
        """Drop the unit's record."""
        self.attempts.pop(unit, None)

    def unfinished(self) -> list[Attempt]:
        """Every record kept."""
        return list(self.attempts.values())
