"""The fleet's desired state: what each pushed reference names now, as the last push said."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from workers.events import PushEvent

DESIRED_KEY = "podhook:desired:{reference}"
# A reference nobody pushed for this long is forgotten; the reconcile asks the registry anyway.
DESIRED_TTL_SECONDS = 30 * 24 * 3600
# Which push of a reference a host's units failed on and were rolled back from.
ROLLED_BACK_KEY = "podhook:rolled-back:{host}:{reference}"


@dataclass(frozen=True)
class DesiredState:
    """What a reference should name: ``digest`` from the last push (None when that push did
    not say, so the tag must be pulled to learn it) and ``generation``, which every push of the
    reference increments, so a job can tell whether a push came while it worked.
    """

    reference: str
    digest: str | None
    generation: int
    source: str = ""
    received_at: float | None = None


# How a push becomes its reference's desired state, in Lua, for the script that routes pushes
# (workers/routing.py): called with the desired key and ``push_fields(event)``. The generation
# and the fields change together, atomically.
RECORD_PUSH_LUA = f"""
local function record_push(key, digest, source, received_at)
    redis.call('HINCRBY', key, 'generation', 1)
    redis.call('HSET', key, 'digest', digest, 'source', source, 'received_at', received_at)
    redis.call('EXPIRE', key, {DESIRED_TTL_SECONDS})
end
"""


def push_fields(event: PushEvent) -> list[str]:
    """The digest, source and arrival time a push records, as Redis stores them."""
    received_at = "" if event.received_at is None else repr(event.received_at)
    return [event.digest or "", event.source, received_at]


def get_desired(redis: Redis, reference: str) -> DesiredState | None:
    """The desired state of ``reference``, or None when no push of it is remembered."""
    raw: dict[bytes, bytes] = redis.hgetall(DESIRED_KEY.format(reference=reference))  # type: ignore[assignment]
    if not raw:
        return None
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    received = fields.get("received_at") or ""
    return DesiredState(
        reference=reference,
        digest=fields.get("digest") or None,
        generation=int(fields.get("generation") or 0),
        source=fields.get("source", ""),
        received_at=float(received) if received else None,
    )


def record_rollback(redis: Redis, host: str, desired: DesiredState) -> None:
    """Remember that ``host``'s units failed on the push ``desired`` names (and were rolled
    back): a container of the reference that starts again is not converged on it once more.
    The next push of the reference (a new generation) lifts it."""
    redis.set(
        ROLLED_BACK_KEY.format(host=host, reference=desired.reference),
        desired.generation,
        ex=DESIRED_TTL_SECONDS,
    )


def was_rolled_back(redis: Redis, host: str, desired: DesiredState) -> bool:
    """Whether ``host`` already failed on, and rolled back from, the push ``desired`` names."""
    raw = redis.get(ROLLED_BACK_KEY.format(host=host, reference=desired.reference))
    return raw is not None and int(raw) == desired.generation
