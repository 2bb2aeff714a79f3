"""Per-unit locks, so one systemd unit is never restarted by two workers at once."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

from redis import Redis
from redis.exceptions import RedisError

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


# Delete KEYS[1] only while it still holds ARGV[1]: a lock is released (or broken) by value.
_DELETE_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``): PIDs compare only within one."""
    try:
        return os.readlink("/proc/self/ns/pid").replace(":", "")
    except OSError:
        return ""


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Seconds between two looks at a lock held by someone else.
_POLL = 0.2


class RedisUnitLocks:
    """Locks in Redis keyed by host and unit, shared by every worker process of the host.

    A lock names its holder (``holder``, the job that takes it). A waiter that finds the lock
    held by a job ``holder_alive`` says is no longer running (its work-horse or worker died)
    breaks it at once, so a crash blocks the unit for about a heartbeat, not for ``ttl``; the
    ``ttl`` still bounds a lock whose holder cannot be judged. Waiters give up after ``wait``
    seconds with LockTimeoutError.
    """

    def __init__(
        self,
        redis: Redis,
        host: str,
        ttl: float = 900.0,
        wait: float = 900.0,
        *,
        holder: str | None = None,
        holder_alive: Callable[[str], bool] | None = None,
    ) -> None:
        self._redis = redis
        self._host = host
        self._ttl = ttl
        self._wait = wait
        self._holder = holder
        self._holder_alive = holder_alive
        self._delete_if = redis.register_script(_DELETE_IF)

    def key(self, unit: str) -> str:
        """The Redis key of a unit's lock."""
        return f"podhook:lock:{self._host}:{unit}"

    def keep(self, unit: str, seconds: float) -> None:
        """Make the held lock a kept one: ``hold``'s release leaves it (its value no longer
        matches) until ``seconds`` pass or ``release_kept`` removes it."""
        self._redis.set(self.key(unit), KEPT, ex=max(1, round(seconds)))

    def release_kept(self, unit: str) -> None:
        """Remove the unit's lock if it is a kept one (not a worker's lock in hand)."""
        self._delete_if(keys=[self.key(unit)], args=[KEPT])

    def _read(self, key: str) -> tuple[bytes | None, list[str] | None]:
        """The lock's value, and its fields when a job holds it: job, token, the holding
        process's PID namespace and PID."""
        value: bytes | None = self._redis.get(key)  # type: ignore[assignment]
        if value is None or not value.startswith(b"job:"):
            return value, None
        return value, value.decode().split(":")[1:]

    def holder_of(self, unit: str) -> str | None:
        """The job holding the unit's lock, if a job holds it."""
        fields = self._read(self.key(unit))[1]
        return fields[0] if fields else None

    def _break_if_dead(self, key: str) -> None:
        value, fields = self._read(key)
        if fields is None or self._holder_alive is None:
            return
        job, _, namespace, pid = (fields + ["", "", ""])[:4]
        # The holding process is gone (seen in our own PID namespace), or RQ says its job no
        # longer runs in a live worker.
        gone = namespace == _pid_namespace() and pid.isdigit() and not _process_exists(int(pid))
        if gone or not self._holder_alive(job):
            assert value is not None
            self._delete_if(keys=[key], args=[value])

    @contextlib.contextmanager
    def hold(self, unit: str) -> Iterator[None]:
        """Hold the unit's lock. Raises LockTimeoutError when it cannot be had in time."""
        key = self.key(unit)
        token = uuid.uuid4().hex
        value = (
            f"job:{self._holder}:{token}:{_pid_namespace()}:{os.getpid()}"
            if self._holder
            else token
        )
        deadline = time.monotonic() + self._wait
        while not self._redis.set(key, value, nx=True, px=max(1, int(self._ttl * 1000))):
            self._break_if_dead(key)
            if time.monotonic() >= deadline:
                raise LockTimeoutError(f"unit {unit!r} stayed locked by another worker")
            time.sleep(_POLL)
        try:
            yield
        finally:
            with contextlib.suppress(RedisError):
                self._delete_if(keys=[key], args=[value])
