"""Redis connections: every client podhook uses, from a URL or through Redis Sentinel.

With ``redis_sentinels`` set, clients are ``Sentinel(...).master_for(redis_master_name)``, as
RQ documents for Sentinel: each new connection asks the sentinels where the primary is, so a
client follows a failover without a restart. A command that fails for want of a connection
is retried, with backoff, for a time that depends on the client's role: a few seconds for the
webhook app (a delivery must get its 503 while the sender still waits), about a minute for
workers (long enough for the sentinels to elect a new primary; past it the worker exits and
its service manager restarts it). ``confirm_replicated`` is what makes a delivery's 2xx mean
"on a replica" (docs/ha.md).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from workers.settings import Settings, redact_url, split_address

log = logging.getLogger("podhook.redis")

Role = Literal["app", "worker"]
T = TypeVar("T")

DEFAULT_URL = "redis://127.0.0.1:6379/0"

# Seconds a command keeps being retried while Redis (or the primary) cannot be reached.
# The app's must fit in a sender's patience (Harbor waits 3 s): a delivery made during a
# failover gets its 503 and the sender retries it later. A worker's must outlast a failover
# (Sentinel's down-after-milliseconds, 30 s in its sample configuration, plus the election).
RETRY_BUDGET: dict[Role, float] = {"app": 1.0, "worker": 60.0}
# The app retries only connections refused or closed (a primary gone, a failover); a Redis
# that hangs gets no second wait. Workers retry timeouts too.
RETRIED_ERRORS: dict[Role, tuple[type[Exception], ...]] = {
    "app": (RedisConnectionError,),
    "worker": (RedisConnectionError, RedisTimeoutError, socket.timeout),
}
# The app's clients answer or fail fast: a delivery must get its 503 before the sender (or
# gunicorn) gives up. Workers keep redis-py's defaults (RQ sets the read timeout above its
# blocking dequeue), with a connect timeout so a primary that vanished is noticed.
SOCKET_TIMEOUTS: dict[Role, tuple[float | None, float | None]] = {
    "app": (3.0, 5.0),  # (connect, read)
    "worker": (5.0, None),
}
# Sentinels are asked one after the other: one that does not answer within a second is
# skipped, not retried.
SENTINEL_TIMEOUT = 1.0
REPLICATION_MARK_KEY = "podhook:replication-mark"


class ReplicationError(RedisError):
    """Raised when fewer replicas than required acknowledged a delivery's writes in time.

    A RedisError, so the webhook route answers it like Redis being down: 503, and the sender
    retries.
    """


class FailoverRetry(Retry):
    """redis-py's Retry bounded by time rather than by count.

    Retries ``errors`` (connection errors, and timeouts for workers) with exponential backoff,
    capped at one second, until ``budget`` seconds have passed since the command was first
    tried. A retry reconnects, and a Sentinel-managed connection asks the sentinels for the
    primary again when it does.
    Bounded by time because redis-py nests these retries (around a command, and around the
    connect inside it): a count would multiply, a deadline does not.
    """

    def __init__(
        self,
        budget: float,
        errors: tuple[type[Exception], ...] = RETRIED_ERRORS["worker"],
    ) -> None:
        super().__init__(
            ExponentialBackoff(cap=1.0, base=0.05), retries=-1, supported_errors=errors
        )
        self.budget = budget

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        deadline = time.monotonic() + self.budget
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if failures == 1:
                    log.warning("Redis: %s; retrying for up to %g s", error, self.budget)
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                pause = min(self._backoff.compute(failures), deadline - time.monotonic())
                if pause <= 0:
                    raise
                time.sleep(pause)


def connect(
    settings: Settings,
    *,
    role: Role = "worker",
    socket_timeout: float | None = None,
    socket_connect_timeout: float | None = None,
) -> Redis:
    """A Redis client of the configured primary, for the webhook app or a worker.

    From ``redis_url`` (``redis://127.0.0.1:6379/0`` when unset), or, with ``redis_sentinels``
    set, a client of the primary the sentinels name for ``redis_master_name``, with
    ``redis_url`` giving the user, password, database and TLS. ``socket_timeout`` and
    ``socket_connect_timeout`` override the role's. Connects lazily: raises nothing here;
    commands raise redis.RedisError once the role's retry time has passed.
    """
    connect_timeout, read_timeout = SOCKET_TIMEOUTS[role]
    if socket_connect_timeout is not None:
        connect_timeout = socket_connect_timeout
    if socket_timeout is not None:
        read_timeout = socket_timeout
    if role == "app" and settings.redis_wait_replicas and read_timeout is not None:
        # WAIT blocks on the server for its timeout: the reply must not be cut short.
        read_timeout = max(read_timeout, settings.redis_wait_timeout + 2)
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": read_timeout,
        "retry": FailoverRetry(RETRY_BUDGET[role], RETRIED_ERRORS[role]),
    }
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url or DEFAULT_URL, **options)
    node = parse_url(settings.redis_url) if settings.redis_url else {}
    if node.pop("connection_class", None) is SSLConnection:
        node["ssl"] = True
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(
        [split_address("redis_sentinels", address) for address in settings.redis_sentinels],
        sentinel_kwargs=sentinel_options,
    )
    return sentinel.master_for(settings.redis_master_name, **node, **options)


def describe(settings: Settings) -> str:
    """Where the Redis of ``settings`` is, for messages and logs (no password)."""
    if settings.redis_sentinels:
        return (
            f"primary {settings.redis_master_name!r} of sentinels "
            f"{','.join(settings.redis_sentinels)}"
        )
    return redact_url(settings.redis_url or DEFAULT_URL)


class LuaScript:
    """A Lua script that Redis runs by its SHA1 (EVALSHA, one round trip), sent whole (EVAL)
    only to a Redis that does not hold it yet (a new or restarted one).

    The SHA1 is computed once, here, rather than on every call as a redis-py Script built per
    call would; EVAL leaves the script in Redis's cache for the next EVALSHA.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - Redis names scripts so

    def __call__(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        """Run the script on ``keys`` and ``args``; its reply. Raises redis.RedisError."""
        try:
            return redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return redis.eval(self.text, len(keys), *keys, *args)


def confirm_replicated(redis: Redis, settings: Settings) -> int:
    """Wait until ``redis_wait_replicas`` replicas hold every write made so far; how many did.

    Does nothing (and returns 0) when ``redis_wait_replicas`` is 0. Raises ReplicationError
    when fewer replicas acknowledged within ``redis_wait_timeout``, redis.RedisError when
    Redis fails.

    WAIT covers the writes of the connection it is sent on, and a client's pool may have
    served the caller's writes on other connections: so WAIT goes on one connection right
    after a write of its own. Replication is one ordered stream, so a replica that has that
    write has every write acknowledged before it.
    """
    wanted = settings.redis_wait_replicas
    if wanted <= 0:
        return 0
    timeout_ms = max(1, round(settings.redis_wait_timeout * 1000))
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(REPLICATION_MARK_KEY, repr(time.time()), ex=60)
        pipe.wait(wanted, timeout_ms)
        _, acknowledged = pipe.execute()
    if int(acknowledged) < wanted:
        raise ReplicationError(
            f"{acknowledged} of {wanted} required replica(s) acknowledged within "
            f"{settings.redis_wait_timeout:g} s (redis_wait_replicas)"
        )
    return int(acknowledged)
