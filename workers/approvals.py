"""Approvals: updates of containers labeled ``io.podhook.approval=required`` wait as
``pending`` until someone approves that digest of that reference (``podhook approve``, the
admin API, the status page). An approval names one digest: the next push needs its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis import Redis

from workers.queueing import JobOptions, request_convergence

APPROVED_KEY = "podhook:approved:{reference}:{digest}"
# Updates waiting for an approval: "<host> <reference>" -> {digest, since, containers}.
PENDING_KEY = "podhook:pending-approvals"
APPROVAL_TTL_SECONDS = 30 * 24 * 3600
EVERY_HOST = "*"


@dataclass(frozen=True)
class PendingApproval:
    """One host's update of ``reference`` to ``digest``, waiting since ``since`` for an
    approval; ``containers`` are the containers it would update."""

    host: str
    reference: str
    digest: str
    since: float
    containers: tuple[str, ...]


def request_approval(
    redis: Redis, host: str, reference: str, digest: str, containers: list[str], now: float
) -> None:
    """Record that ``host``'s update of ``reference`` to ``digest`` waits for an approval
    (kept from the first time it was asked for that digest)."""
    field = f"{host} {reference}"
    raw = redis.hget(PENDING_KEY, field)
    if raw is not None and json.loads(raw).get("digest") == digest:
        return
    value = {"digest": digest, "since": now, "containers": sorted(containers)}
    redis.hset(PENDING_KEY, field, json.dumps(value))


def clear_pending(redis: Redis, host: str, reference: str) -> None:
    """Forget ``host``'s pending approval of ``reference`` (it updated, or the need went)."""
    redis.hdel(PENDING_KEY, f"{host} {reference}")


def pending_approvals(redis: Redis) -> list[PendingApproval]:
    """Every update waiting for an approval, by reference then host."""
    found = []
    entries: dict[bytes, bytes] = redis.hgetall(PENDING_KEY)  # type: ignore[assignment]
    for field, raw in entries.items():
        host, _, reference = field.decode().partition(" ")
        value = json.loads(raw)
        found.append(
            PendingApproval(
                host, reference, value["digest"], value["since"], tuple(value["containers"])
            )
        )
    return sorted(found, key=lambda p: (p.reference, p.host))


def approve(redis: Redis, reference: str, digest: str, host: str | None = None) -> None:
    """Approve the update of ``reference`` to ``digest`` on ``host`` (every host when None)."""
    key = APPROVED_KEY.format(reference=reference, digest=digest)
    redis.sadd(key, host or EVERY_HOST)
    redis.expire(key, APPROVAL_TTL_SECONDS)


def is_approved(redis: Redis, host: str, reference: str, digest: str) -> bool:
    """Whether the update of ``reference`` to ``digest`` is approved on ``host``."""
    members = redis.smembers(APPROVED_KEY.format(reference=reference, digest=digest))
    return bool(members & {host.encode(), EVERY_HOST.encode()})


class NothingToApproveError(LookupError):
    """Raised when no update of a reference waits for an approval and no digest was named."""


def approve_updates(
    redis: Redis,
    reference: str,
    digest: str | None = None,
    host: str | None = None,
    options: JobOptions | None = None,
) -> list[PendingApproval]:
    """Approve the update of ``reference`` to ``digest`` (by default, the digest each host's
    pending update waits for) on ``host`` (every host when None), and ask each host whose
    update waited to converge now. Returns the pending updates approved. Raises
    NothingToApproveError when nothing waits and no digest was named."""
    waiting = [
        p
        for p in pending_approvals(redis)
        if p.reference == reference
        and (digest is None or p.digest == digest)
        and (host is None or p.host == host)
    ]
    if digest is None and not waiting:
        raise NothingToApproveError(f"no update of {reference} waits for an approval")
    for item in waiting:
        approve(redis, reference, item.digest, host)
    if digest is not None:
        approve(redis, reference, digest, host)
    for item in waiting:
        request_convergence(redis, item.host, reference, options)
    return waiting
