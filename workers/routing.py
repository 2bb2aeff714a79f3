"""Which hosts a push concerns (those whose inventory holds the reference, plus those whose
inventory is unknown or too old to trust, less the hosts that stopped beating), and asking
them to converge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis

from workers.desired import DESIRED_KEY, RECORD_PUSH_LUA, push_fields
from workers.events import PushEvent
from workers.hosts import DEFAULT_STALE_AFTER_SECONDS, HOSTS_KEY
from workers.inventory import INVENTORY_AT_KEY, REFERENCE_HOSTS_KEY
from workers.queueing import (
    DECIDE_LUA,
    WORK_KEY_PREFIX,
    JobOptions,
    NoHostsError,
    QueuedJob,
    commit_convergence,
    lua_prefixes,
    prepare_convergence,
)
from workers.redis_connection import LuaScript
from workers.settings import Settings

DEFAULT_INVENTORY_MAX_AGE_SECONDS = Settings.inventory_max_age

# O(hosts concerned + hosts whose inventory is unknown), whatever the fleet's size: the
# reference's index entry, the hosts whose inventory is older than the allowed age, and each
# candidate's heartbeat. Sorted, as Python sorts str (UTF-8 byte order is code point order).
_ROUTE_LUA = """
local function route(ref_hosts_key, inventory_at_key, hosts_key, beat_after, inventory_before)
    local candidates = {}
    for _, host in ipairs(redis.call('SMEMBERS', ref_hosts_key)) do candidates[host] = true end
    local unknown = redis.call('ZRANGEBYSCORE', inventory_at_key, '-inf', inventory_before)
    for _, host in ipairs(unknown) do candidates[host] = true end
    local routed = {}
    for host, _ in pairs(candidates) do
        local beat = redis.call('ZSCORE', hosts_key, host)
        if beat and tonumber(beat) >= tonumber(beat_after) then table.insert(routed, host) end
    end
    table.sort(routed)
    return routed
end
"""
_ROUTE = LuaScript(_ROUTE_LUA + "return route(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])")

# A delivery's reads and decisions in one round trip. KEYS: the delivery's "seen" key (or an
# empty name), the hosts, the inventory times, then per push its reference's index entry and
# desired key. ARGV: RQ's prefixes (DECIDE_LUA), the heartbeat and inventory cut-offs, the work
# key prefix, then per push its reference and push_fields. Replies {"duplicate"} for a
# delivery seen before, {"no-hosts"} when no host ever registered (nothing recorded), else
# {"routed", per push {host, decision, job, host, decision, job, ...}}: each push recorded as
# its reference's desired state, then each concerned host's work decided (DECIDE_LUA): joined,
# marked again, or "new", for a job to be prepared and committed (queueing.commit_convergence).
_PLAN = LuaScript(
    RECORD_PUSH_LUA
    + _ROUTE_LUA
    + DECIDE_LUA
    + """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate'} end
if #KEYS > 3 and redis.call('ZCARD', KEYS[2]) == 0 then return {'no-hosts'} end
local beat_after, inventory_before, work_prefix = ARGV[3], ARGV[4], ARGV[5]
local pushes = {}
for k = 4, #KEYS, 2 do
    local arg = 6 + (k - 4) * 2
    record_push(KEYS[k + 1], ARGV[arg + 1], ARGV[arg + 2], ARGV[arg + 3])
    local decided = {}
    for _, host in ipairs(route(KEYS[k], KEYS[3], KEYS[2], beat_after, inventory_before)) do
        local decision, job = decide(work_prefix .. host .. ':' .. ARGV[arg])
        table.insert(decided, host)
        table.insert(decided, decision)
        table.insert(decided, job)
    end
    table.insert(pushes, decided)
end
return {'routed', pushes}
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
    return [_text(host) for host in _ROUTE(redis, keys, args)]


@dataclass(frozen=True)
class Dispatch:
    """What came of a delivery's pushes: ``duplicate`` when its id was seen before (nothing
    done), else ``jobs``, per push, the QueuedJob of each host it reached, sorted by host."""

    duplicate: bool
    jobs: list[list[QueuedJob]]


def dispatch_pushes(
    redis: Redis,
    events: list[PushEvent],
    options: JobOptions | None = None,
    *,
    seen_key: str | None = None,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    inventory_max_age: float = DEFAULT_INVENTORY_MAX_AGE_SECONDS,
) -> Dispatch:
    """Record each of ``events`` as its reference's desired state and ask every concerned host
    (``route_push``) to converge on it: one job per host and reference, which later hints join.

    Nothing is done when ``seen_key`` (a delivery's id, queueing.delivery_key) exists. Two
    round trips at most: one script routes, records and decides (joining waiting jobs, marking
    running ones); a second queues the new jobs (queueing.commit_convergence), each checked
    again as it is stored, so two deliveries at once still make one job per host and
    reference. Raises NoHostsError when no host has registered at all (the sender should
    retry; nothing is recorded), and redis.RedisError when Redis fails; a retried delivery
    converges the same way.
    """
    if not events and not seen_key:
        return Dispatch(duplicate=False, jobs=[])
    now = time.time()
    keys = [seen_key or "", HOSTS_KEY, INVENTORY_AT_KEY]
    args: list[str] = [
        *lua_prefixes(),
        repr(now - stale_after),
        repr(now - inventory_max_age),
        WORK_KEY_PREFIX,
    ]
    for event in events:
        keys += [
            REFERENCE_HOSTS_KEY.format(reference=event.reference),
            DESIRED_KEY.format(reference=event.reference),
        ]
        args += [event.reference, *push_fields(event)]
    reply = _PLAN(redis, keys, args)
    outcome = _text(reply[0])
    if outcome == "duplicate":
        return Dispatch(duplicate=True, jobs=[])
    if outcome == "no-hosts":
        raise NoHostsError("no worker host has registered; start `podhook worker` on a host")
    jobs: list[list[QueuedJob | None]] = []
    prepared, slots = [], []
    for index, (event, decided) in enumerate(zip(events, reply[1], strict=True)):
        row: list[QueuedJob | None] = []
        for at in range(0, len(decided), 3):
            host, decision, job = (_text(word) for word in decided[at : at + 3])
            if decision == "new":
                hint = event.to_dict()
                prepared.append(
                    prepare_convergence(redis, host, event.reference, options, hint=hint)
                )
                slots.append((index, len(row)))
                row.append(None)
            else:
                row.append(QueuedJob(host, job, duplicate=True))
        jobs.append(row)
    for (index, at), queued in zip(
        slots, commit_convergence(redis, prepared, options), strict=True
    ):
        jobs[index][at] = queued
    return Dispatch(duplicate=False, jobs=[[job for job in row if job] for row in jobs])


def dispatch_push(
    redis: Redis,
    event: PushEvent,
    options: JobOptions | None = None,
    *,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    inventory_max_age: float = DEFAULT_INVENTORY_MAX_AGE_SECONDS,
) -> list[QueuedJob]:
    """``dispatch_pushes`` of one push: the QueuedJob of each host it reached, sorted by host.

    Raises NoHostsError when no host has registered at all, redis.RedisError when Redis fails.
    """
    dispatch = dispatch_pushes(
        redis, [event], options, stale_after=stale_after, inventory_max_age=inventory_max_age
    )
    return dispatch.jobs[0]
