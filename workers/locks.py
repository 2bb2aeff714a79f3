"""Per-unit locks, so one systemd unit is never restarted by two workers at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from redis import Redis
from redis.exceptions import LockError, WatchError

# The value of a lock kept for a restart that another process carries on (a handoff).
KEPT = b"kept"


class LockTimeoutError(Exception):
    """Raised when a unit stays locked by another worker for longer than the wait allows."""


class UnitLocks(Protocol):
    """Mutual exclusion per unit on one host."""

    def hold(self, unit: str) -> contextlib.AbstractContextManager[None]:
        """A context manager that holds the lock of ``unit`` for its duration."""
        ...

    def keep(self, unit: str, seconds: float) -> None:
        """While holding ``unit``: leave it locked for ``seconds`` after ``hold`` ends, for a
        restart carried on by another process; ``release_kept`` ends that earlier."""
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

    def keep(self, unit: str, seconds: float) -> None:
        """Make the held lock a kept one: ``hold``'s release leaves it (its token no longer
        matches) until ``seconds`` pass or ``release_kept`` removes it."""
        self._redis.set(self.key(unit), KEPT, ex=max(1, round(seconds)))

    def release_kept(self, unit: str) -> None:
        """Remove the unit's lock if it is a kept one (not a worker's lock in hand)."""
        key = self.key(unit)
        with self._redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) == KEPT:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except WatchError:
                pass  # taken or changed meanwhile: not ours to remove

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
