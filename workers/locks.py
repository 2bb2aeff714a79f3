"""Per-unit locks, so one systemd unit is never restarted by two workers at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from redis import Redis
from redis.exceptions import LockError


class LockTimeoutError(Exception):
    """Raised when a unit stays locked by another worker for longer than the wait allows."""


class UnitLocks(Protocol):
    """Mutual exclusion per unit on one host."""

    def hold(self, unit: str) -> contextlib.AbstractContextManager[None]:
        """A context manager that holds the lock of ``unit`` for its duration."""
        ...


class RedisUnitLocks:
    """Locks in Redis keyed by host and unit, shared by every worker process of the host.

    A lock expires after ``ttl`` seconds, so a worker killed mid-restart cannot block the unit
    forever; waiters give up after ``wait`` seconds with LockTimeoutError.
    """

    def __init__(self, redis: Redis, host: str, ttl: float = 900.0, wait: float = 900.0) -> None:
        self._redis = redis
        self._host = host
        self._ttl = ttl
        self._wait = wait

    def key(self, unit: str) -> str:
        """The Redis key of a unit's lock."""
        return f"podhook:lock:{self._host}:{unit}"

    @contextlib.contextmanager
    def hold(self, unit: str) -> Iterator[None]:
        """Hold the unit's lock. Raises LockTimeoutError when it cannot be had in time."""
        lock = self._redis.lock(self.key(unit), timeout=self._ttl, blocking_timeout=self._wait)
        if not lock.acquire():
            raise LockTimeoutError(f"unit {unit!r} stayed locked by another worker")
        try:
            yield
        finally:
            with contextlib.suppress(LockError):
                lock.release()
