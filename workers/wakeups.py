"""Wake-ups: "look at this reference on this host again at that time", for updates that wait
for a maintenance window, an image age or the end of a rollout's soak.

The host's worker claims the wake-ups that are due (by the settings' clock) and asks the host to
converge on their references; the job then decides again, from what holds at that time.
"""

from __future__ import annotations

from redis import Redis

WAKEUPS_KEY = "podhook:wakeups:{host}"


def wake_later(redis: Redis, host: str, reference: str, at: float) -> None:
    """Have ``host`` look at ``reference`` again at ``at`` (Unix time, settings' clock), or
    sooner if another wake-up of it is due sooner."""
    # LT keeps the sooner of two wake-ups, and still adds one that is not there.
    redis.zadd(WAKEUPS_KEY.format(host=host), {reference: at}, lt=True)


def claim_due(redis: Redis, host: str, now: float) -> list[str]:
    """The references whose wake-up on ``host`` is due at ``now``, each claimed by exactly one
    caller (several worker processes of a host may ask at once)."""
    key = WAKEUPS_KEY.format(host=host)
    due: list[bytes] = redis.zrangebyscore(key, "-inf", now)  # type: ignore[assignment]
    return [member.decode() for member in due if redis.zrem(key, member)]


def pending_wakeups(redis: Redis, host: str) -> dict[str, float]:
    """Every wake-up of ``host`` not yet claimed: reference -> when."""
    entries: list[tuple[bytes, float]] = redis.zrange(  # type: ignore[assignment]
        WAKEUPS_KEY.format(host=host), 0, -1, withscores=True
    )
    return {member.decode(): score for member, score in entries}
