"""Rollouts: one push of a reference reaching the fleet wave by wave.

A rollout is started by the first host that has to update a reference its policy rolls out
(workers/rollout_policy.py) to a digest no rollout names yet; it fixes its waves from the hosts
that run the reference then, and opens the first. A host updates only once its wave is open;
its job records how it went. A wave whose hosts are all updated (and so healthy: the update
verified them) soaks for the policy's time, then the next opens; a host that failed halts the
rollout, and no later wave updates. A newer push of the reference supersedes the rollout.

Every change goes through ``change_rollout`` (an optimistic transaction on the rollout's key),
which then carries out what the change asks: hosts to converge, wake-ups at the soak's end,
and one notification per step. Workers also advance every active rollout on their heartbeat,
so a soak ends even when no job of the reference runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import WatchError

from workers.hosts import get_host_labels
from workers.queueing import JobOptions, request_convergence
from workers.rollout_policy import RolloutPolicy
from workers.rollout_state import (
    ACTIVE_STATES,
    HostRecord,
    HostState,
    Rollout,
    RolloutState,
    WaveRecord,
    advance,
    count_hosts,
    open_wave,
    record_step,
)
from workers.routing import route_push
from workers.settings import Settings
from workers.wakeups import wake_later

log = logging.getLogger("podhook.rollouts")

ROLLOUT_KEY = "podhook:rollout:{id}"
# Every rollout by the time it started; the active ones (rolling or paused) on their own.
ROLLOUTS_KEY = "podhook:rollouts"
ACTIVE_KEY = "podhook:rollouts-active"
# The newest rollout of a reference, and the rollout of one (reference, digest).
CURRENT_KEY = "podhook:rollout-of:{reference}"
BY_DIGEST_KEY = "podhook:rollout-of:{reference}:{digest}"
ROLLOUT_TTL_SECONDS = 30 * 24 * 3600
_WATCH_ATTEMPTS = 50
# Every worker of the fleet may move rollouts on; one per this many milliseconds does.
ADVANCING_KEY = "podhook:rollouts-advancing"
ADVANCE_EVERY_MS = 1000


class RolloutError(Exception):
    """Raised for a rollout that does not exist or cannot do what was asked."""


# -------------------------------------------------------------------- Redis


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def rollout_id(reference: str, digest: str, now: float) -> str:
    """A rollout's id: when it started, and six hex digits that tell apart two rollouts
    started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    tail = hashlib.sha256(f"{reference}@{digest}@{now!r}@{secrets.token_hex(8)}".encode())
    return f"{stamp}-{tail.hexdigest()[:6]}"


def get_rollout(redis: Redis, rollout: str) -> Rollout | None:
    """The rollout with id ``rollout``, or the newest rollout of a reference of that name."""
    raw = redis.get(ROLLOUT_KEY.format(id=rollout))
    if raw is None:
        current = redis.get(CURRENT_KEY.format(reference=rollout))
        raw = redis.get(ROLLOUT_KEY.format(id=_text(current))) if current else None
    return Rollout.from_dict(json.loads(raw)) if raw else None


def list_rollouts(redis: Redis, limit: int = 50) -> list[Rollout]:
    """The newest ``limit`` rollouts, newest first."""
    ids = redis.zrevrange(ROLLOUTS_KEY, 0, max(0, limit - 1))
    found = []
    for raw in redis.mget([ROLLOUT_KEY.format(id=_text(i)) for i in ids]) if ids else []:
        if raw:
            found.append(Rollout.from_dict(json.loads(raw)))
    return found


def rollout_of(redis: Redis, reference: str, digest: str) -> Rollout | None:
    """The rollout of ``reference`` to ``digest``, if one started."""
    found = redis.get(BY_DIGEST_KEY.format(reference=reference, digest=digest))
    return get_rollout(redis, _text(found)) if found else None


def start_rollout(
    redis: Redis,
    settings: Settings,
    policy: RolloutPolicy,
    reference: str,
    digest: str,
    now: float,
) -> Rollout:
    """The rollout of ``reference`` to ``digest``: the reference's current one when it rolls
    out that digest, or a new one whose waves hold the hosts running the reference now (and
    those whose inventory is unknown), by their labels; it supersedes the reference's rollout
    in flight and opens its first wave. Several hosts may ask at once: the pointers to the
    rollout of the digest and of the reference are read and written in one transaction, so
    one rollout is started. Raises RolloutError when they keep changing."""
    by_digest = BY_DIGEST_KEY.format(reference=reference, digest=digest)
    current_key = CURRENT_KEY.format(reference=reference)
    for _ in range(_WATCH_ATTEMPTS):
        with redis.pipeline() as pipe:
            try:
                pipe.watch(by_digest, current_key)
                named, current = pipe.get(by_digest), pipe.get(current_key)
                if named is not None and current is not None and _text(named) == _text(current):
                    found = get_rollout(redis, _text(named))
                    if found is not None:
                        return found
                # None yet, or one a newer push superseded and this digest is pushed again
                # (A, B, A): a new rollout, from the first wave.
                rollout, opened = _new_rollout(redis, settings, policy, reference, digest, now)
                pipe.multi()
                _save(pipe, rollout)
                pipe.set(by_digest, rollout.id, ex=ROLLOUT_TTL_SECONDS)
                pipe.set(current_key, rollout.id, ex=ROLLOUT_TTL_SECONDS)
                pipe.execute()
            except WatchError:
                continue
        if current is not None:
            supersede(redis, settings, _text(current), rollout, now)
        _carry_out(redis, settings, rollout, opened, 0)  # every step is new
        return rollout
    raise RolloutError(f"the rollout of {reference} kept changing; try again")


def _new_rollout(
    redis: Redis,
    settings: Settings,
    policy: RolloutPolicy,
    reference: str,
    digest: str,
    now: float,
) -> tuple[Rollout, list[int]]:
    """A rollout of ``reference`` to ``digest`` with its first wave open, and the waves it
    opened (empty waves go by at once)."""
    hosts = route_push(
        redis,
        reference,
        stale_after=settings.host_stale_after,
        inventory_max_age=settings.inventory_max_age,
        now=time.time(),
    )
    labels = get_host_labels(redis)
    known = set(hosts) | ({settings.host_id} if settings.host_id else set())
    assigned = policy.assign({h: labels.get(h, {}) for h in known})
    rollout = Rollout(
        id=rollout_id(reference, digest, now),
        reference=reference,
        digest=digest,
        policy=policy.match,
        soak=policy.soak,
        created_at=now,
        state=RolloutState.ROLLING,
        waves=[
            WaveRecord(
                wave.name,
                wave.describe(),
                {h: HostRecord(HostState.WAITING, at=now) for h in members},
            )
            for wave, members in zip(policy.waves, assigned, strict=True)
        ],
    )
    record_step(
        rollout, now, f"started for {digest} on {count_hosts(known)} in {len(rollout.waves)} waves"
    )
    open_wave(rollout, 0, now)
    return rollout, [0, *advance(rollout, now)]


def supersede(redis: Redis, settings: Settings, old: str, new: Rollout, now: float) -> None:
    """Mark rollout ``old`` superseded by ``new`` (a newer push of its reference)."""

    def change(rollout: Rollout) -> list[int]:
        if rollout.state in ACTIVE_STATES:
            rollout.state = RolloutState.SUPERSEDED
            rollout.reason = f"superseded by rollout {new.id} of {new.digest}"
            record_step(rollout, now, rollout.reason)
        return []

    if old != new.id:
        change_rollout(redis, settings, old, change)


def advance_rollout(redis: Redis, settings: Settings, rollout: Rollout, now: float) -> Rollout:
    """``rollout`` moved on as far as it goes at ``now`` (written only when it moves)."""
    trial = Rollout.from_dict(rollout.to_dict())
    if advance(trial, now) or trial.state is not rollout.state or trial.steps != rollout.steps:
        return change_rollout(redis, settings, rollout.id, lambda r: advance(r, now))
    return rollout


def record_host(
    redis: Redis,
    settings: Settings,
    rollout: Rollout,
    host: str,
    state: HostState,
    reason: str,
    now: float,
) -> Rollout:
    """Record how ``host`` did in ``rollout`` (its job's rows said ``state``), and move the
    rollout on."""

    def change(current: Rollout) -> list[int]:
        index = current.wave_of(host)
        if index is None:
            # A host that came to run the reference after the rollout started: last wave.
            index = len(current.waves) - 1
        record = current.waves[index].hosts.get(host)
        if record is None or record.state is not state:
            # The first word on a state stays: a later look ("already on it") says less.
            current.waves[index].hosts[host] = HostRecord(state, reason, now)
        return advance(current, now)

    return change_rollout(redis, settings, rollout.id, change)


def change_rollout(
    redis: Redis,
    settings: Settings,
    rollout_id_: str,
    change: Callable[[Rollout], list[int]],
) -> Rollout:
    """Apply ``change`` to the stored rollout atomically (retried when another host changed it
    meanwhile), then carry out what it asks: converge the hosts of the waves it opened, wake
    the next wave's hosts when a soak ends, notify each new step. Raises RolloutError when
    there is no such rollout."""
    key = ROLLOUT_KEY.format(id=rollout_id_)
    for _ in range(_WATCH_ATTEMPTS):
        with redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    raise RolloutError(f"no rollout {rollout_id_!r}")
                rollout = Rollout.from_dict(json.loads(raw))
                told = len(rollout.steps)
                opened = change(rollout)
                pipe.multi()
                _save(pipe, rollout)
                pipe.execute()
            except WatchError:
                continue
        _carry_out(redis, settings, rollout, opened, told)
        return rollout
    raise RolloutError(f"rollout {rollout_id_} kept changing; try again")


def _save(redis: Any, rollout: Rollout) -> None:
    stored = json.dumps(rollout.to_dict())
    redis.set(ROLLOUT_KEY.format(id=rollout.id), stored, ex=ROLLOUT_TTL_SECONDS)
    redis.zadd(ROLLOUTS_KEY, {rollout.id: rollout.created_at})
    if rollout.state in ACTIVE_STATES:
        redis.sadd(ACTIVE_KEY, rollout.id)
    else:
        redis.srem(ACTIVE_KEY, rollout.id)


def _carry_out(
    redis: Redis, settings: Settings, rollout: Rollout, opened: list[int], told: int
) -> None:
    options = JobOptions.from_settings(settings)
    for index in opened:
        for host in sorted(rollout.waves[index].hosts):
            request_convergence(redis, host, rollout.reference, options)
    if rollout.state is RolloutState.ROLLING:
        wave = rollout.waves[rollout.wave]
        if wave.soak_until is not None and wave.done_at is None:
            # The soak ends with no job running: the next wave's hosts look again then.
            for host in (
                rollout.waves[rollout.wave + 1].hosts
                if rollout.wave + 1 < len(rollout.waves)
                else ()
            ):
                wake_later(redis, host, rollout.reference, wave.soak_until)
    new_steps = rollout.steps[told:]
    if new_steps:
        for step in new_steps:
            log.info("rollout %s of %s: %s", rollout.id, rollout.reference, step.text)
        from workers.notify import notify_rollout  # noqa: PLC0415 - apprise loads slowly

        notify_rollout(settings, rollout, new_steps)


def advance_active(redis: Redis, settings: Settings, now: float) -> int:
    """Move every active rollout on at ``now`` (a soak that ended opens the next wave); only
    a rollout that moves is written, and one worker of the fleet looks per second. Returns
    how many moved."""
    if not redis.set(ADVANCING_KEY, 1, nx=True, px=ADVANCE_EVERY_MS):
        return 0
    moved = 0
    for member in redis.smembers(ACTIVE_KEY):
        rollout = get_rollout(redis, _text(member))
        if rollout is None:
            redis.srem(ACTIVE_KEY, member)
            continue
        if advance_rollout(redis, settings, rollout, now) is not rollout:
            moved += 1
    return moved


def forget_host_in_rollouts(redis: Redis, settings: Settings, host: str, now: float) -> int:
    """Take a host that is gone for good (``podhook hosts forget``) out of every active
    rollout, so its wave no longer waits for it. Returns how many rollouts held it."""
    held = 0
    for member in redis.smembers(ACTIVE_KEY):
        rollout = get_rollout(redis, _text(member))
        if rollout is None or rollout.wave_of(host) is None:
            continue

        def change(current: Rollout) -> list[int]:
            for wave in current.waves:
                if wave.hosts.pop(host, None) is not None:
                    record_step(
                        current, now, f"host {host} forgotten: wave {wave.name} goes on without it"
                    )
            return advance(current, now)

        change_rollout(redis, settings, rollout.id, change)
        held += 1
    return held


# -------------------------------------------------------------------- the operator's hand


def pause(redis: Redis, settings: Settings, rollout: str, now: float) -> Rollout:
    """Stop opening waves (hosts of open waves finish); ``resume`` goes on."""
    return _control(redis, settings, rollout, now, "pause")


def resume(redis: Redis, settings: Settings, rollout: str, now: float) -> Rollout:
    """Go on with a paused rollout, or retry a halted one from the wave that failed: its failed
    hosts update again."""
    return _control(redis, settings, rollout, now, "resume")


def abort(redis: Redis, settings: Settings, rollout: str, now: float) -> Rollout:
    """End the rollout: no host that has not updated will (the hosts updated stay)."""
    return _control(redis, settings, rollout, now, "abort")


def promote(redis: Redis, settings: Settings, rollout: str, now: float) -> Rollout:
    """End the open wave's soak now (its hosts must still all be updated)."""
    return _control(redis, settings, rollout, now, "promote")


def _control(redis: Redis, settings: Settings, name: str, now: float, action: str) -> Rollout:
    found = get_rollout(redis, name)
    if found is None:
        raise RolloutError(f"no rollout {name!r} (give a rollout id or a reference)")

    def change(rollout: Rollout) -> list[int]:
        state = rollout.state
        if action == "pause":
            if state is not RolloutState.ROLLING:
                raise RolloutError(f"rollout {rollout.id} is {state}, not rolling")
            rollout.state = RolloutState.PAUSED
            record_step(rollout, now, "paused by the operator")
            return []
        if action == "resume":
            if state not in (RolloutState.PAUSED, RolloutState.HALTED):
                raise RolloutError(f"rollout {rollout.id} is {state}, not paused or halted")
            if state is RolloutState.HALTED:
                for record in rollout.waves[rollout.wave].hosts.values():
                    if record.state is HostState.FAILED:
                        record.state, record.at = HostState.UPDATING, now
            rollout.state, rollout.reason = RolloutState.ROLLING, ""
            record_step(rollout, now, "resumed by the operator")
            return [rollout.wave, *advance(rollout, now)]
        if action == "abort":
            if state not in (*ACTIVE_STATES, RolloutState.HALTED):
                raise RolloutError(f"rollout {rollout.id} is {state}: nothing to abort")
            rollout.state, rollout.reason = RolloutState.ABORTED, "aborted by the operator"
            record_step(rollout, now, "aborted by the operator")
            return []
        if state is not RolloutState.ROLLING:
            raise RolloutError(f"rollout {rollout.id} is {state}, not rolling")
        wave = rollout.waves[rollout.wave]
        if rollout.wave + 1 >= len(rollout.waves):
            raise RolloutError(f"rollout {rollout.id} is in its last wave: nothing to promote")
        behind = sorted(h for h, r in wave.hosts.items() if r.state is not HostState.UPDATED)
        if behind:
            raise RolloutError(
                f"rollout {rollout.id}: wave {wave.name} is not updated yet on "
                f"{', '.join(behind)}; promote ends a soak, it does not skip hosts"
            )
        wave.promoted = True
        record_step(rollout, now, f"wave {wave.name} promoted by the operator")
        return advance(rollout, now)

    return change_rollout(redis, settings, found.id, change)
