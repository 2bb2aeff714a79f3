"""Which hosts a push concerns (those whose inventory holds the reference, plus those whose
inventory is unknown or too old to trust, less the hosts that stopped beating), and asking
them to converge.
"""

from __future__ import annotations

import hashlib
import time

from redis import Redis
from redis.exceptions import NoScriptError

from workers.desired import record_push
from workers.events import PushEvent
from workers.hosts import DEFAULT_STALE_AFTER_SECONDS, HOSTS_KEY
from workers.inventory import INVENTORY_AT_KEY, REFERENCE_HOSTS_KEY
from workers.queueing import JobOptions, NoHostsError, QueuedJob, request_convergence
from workers.settings import Settings

DEFAULT_INVENTORY_MAX_AGE_SECONDS = Settings.inventory_max_age

# One round trip, O(hosts concerned + hosts whose inventory is unknown), whatever the fleet's
# size: the reference's index entry, the hosts whose inventory is older than the allowed age,
# and each candidate's heartbeat.
_ROUTE = """
local candidates = {}
for _, host in ipairs(redis.call('SMEMBERS', KEYS[1])) do candidates[host] = true end
for _, host in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])) do
    candidates[host] = true
end
local routed = {}
for host, _ in pairs(candidates) do
    local beat = redis.call('ZSCORE', KEYS[3], host)
    if beat and tonumber(beat) >= tonumber(ARGV[1]) then table.insert(routed, host) end
end
return routed
"""
_ROUTE_SHA = hashlib.sha1(_ROUTE.encode()).hexdigest()  # noqa: S324 - Redis names scripts so


def route_push(
    redis: Redis,
    reference: str,
    *,
    stale_after: float,
    inventory_max_age: float,
    now: float | None = None,
) -> list[str]:
    """The hosts, sorted, whose queues a push of ``reference`` must reach.

    A host is concerned when its inventory holds the reference, or when its inventory is
    unknown or older than ``inventory_max_age`` seconds (safe by default); a host whose last
    heartbeat is older than ``stale_after`` seconds gets nothing. Raises redis.RedisError.
    """
    now = time.time() if now is None else now
    keys = [REFERENCE_HOSTS_KEY.format(reference=reference), INVENTORY_AT_KEY, HOSTS_KEY]
    args = [repr(now - stale_after), repr(now - inventory_max_age)]
    try:
        hosts = redis.evalsha(_ROUTE_SHA, len(keys), *keys, *args)
    except NoScriptError:  # a Redis that has not seen it yet (or restarted): send it whole
        hosts = redis.eval(_ROUTE, len(keys), *keys, *args)
    return sorted(host.decode() if isinstance(host, bytes) else host for host in hosts)


def dispatch_push(
    redis: Redis,
    event: PushEvent,
    options: JobOptions | None = None,
    *,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    inventory_max_age: float = DEFAULT_INVENTORY_MAX_AGE_SECONDS,
) -> list[QueuedJob]:
    """Record ``event`` as its reference's desired state and ask every concerned host
    (``route_push``) to converge on it: one job per host and reference, which later hints join.

    Raises NoHostsError when no host has registered at all (the sender should retry), and
    redis.RedisError when Redis fails; a retried delivery converges the same way.
    """
    hosts = route_push(
        redis, event.reference, stale_after=stale_after, inventory_max_age=inventory_max_age
    )
    if not hosts and not redis.zcard(HOSTS_KEY):
        raise NoHostsError("no worker host has registered; start `podhook worker` on a host")
    record_push(redis, event)
    return [
        request_convergence(redis, host, event.reference, options, hint=event.to_dict())
        for host in hosts
    ]
