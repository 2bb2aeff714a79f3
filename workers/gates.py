"""The gate of a host's jobs: whether an update may run now, by the reference's rollout across
the fleet and by the update policy labels of the containers it would restart.

In order: the host's wave of the rollout must be open; an approval, when a container asks for
one; the image's minimum age; the maintenance windows. The first that holds the update names
why (and until when) in the rows, and a wake-up makes the host look again then. Times are the
settings' clock (``clock_offset``), so a drill can move it.
"""

from __future__ import annotations

import time

from redis import Redis

from workers.approvals import clear_pending, is_approved, request_approval
from workers.inventory import routed_reference
from workers.podman_runtime import AUTHFILE_LABEL, Container
from workers.report import ContainerReport, UpdateState, lasting_rows
from workers.rollout_policy import policy_for
from workers.rollouts import (
    HostState,
    advance_rollout,
    get_rollout,
    record_host,
    rollout_of,
    start_rollout,
)
from workers.settings import Settings
from workers.update import DigestLookup, Hold
from workers.update_policy import APPROVAL_LABEL, MIN_AGE_LABEL, format_time, read_policy
from workers.wakeups import wake_later

FIRST_SEEN_KEY = "podhook:first-seen:{reference}:{digest}"
FIRST_SEEN_TTL_SECONDS = 400 * 24 * 3600


def settings_now(settings: Settings) -> float:
    """The settings' clock: the wall clock moved by ``clock_offset``."""
    return time.time() + settings.clock_offset


class FleetGate:
    """The UpdateGate of ``host``'s jobs, on the fleet's Redis; ``lookup`` asks the registry
    for a digest a push did not give when deciding needs it."""

    def __init__(
        self, redis: Redis, settings: Settings, host: str, lookup: DigestLookup | None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.host = host
        self.lookup = lookup

    def digest_for(self, reference: str, members: list[Container]) -> str | None:
        """The registry's digest of ``reference`` when a rollout or a container's policy needs
        one, else None (no registry request)."""
        rolled_out = policy_for(self.settings.rollouts, self._routed(reference)) is not None
        asked = any(read_policy(c.labels).asks_anything for c in members)
        if not (rolled_out or asked) or self.lookup is None or not members:
            return None
        first = members[0]
        return self.lookup(
            first.image_reference, first.labels.get(AUTHFILE_LABEL) or self.settings.authfile
        )

    def hold(self, reference: str, digest: str | None, behind: list[Container]) -> Hold | None:
        """Why ``behind`` must not update to ``digest`` now, or None."""
        now = settings_now(self.settings)
        reference = self._routed(reference)
        policies = [(c, read_policy(c.labels)) for c in behind]
        # An image's age counts from the first job that saw it, whatever held it since.
        seen = (
            self._first_seen(reference, digest, now)
            if digest and any(p.min_age for _, p in policies)
            else now
        )
        policy = policy_for(self.settings.rollouts, reference)
        if policy is not None and digest:
            rollout = start_rollout(self.redis, self.settings, policy, reference, digest, now)
            if rollout.wave_of(self.host) is None:
                rollout = record_host(
                    self.redis, self.settings, rollout, self.host, HostState.WAITING, "", now
                )
            if not rollout.may_update(self.host):
                # Woken at the end of a soak: the wave may open now.
                rollout = advance_rollout(self.redis, self.settings, rollout, now)
            if not rollout.may_update(self.host):
                return Hold(UpdateState.WAITING, rollout.hold_reason(self.host))
        if not digest:
            return None  # nothing below applies without a policy that asked for the digest
        names = sorted(c.name for c, p in policies if p.approval)
        if names and not is_approved(self.redis, self.host, reference, digest):
            request_approval(self.redis, self.host, reference, digest, names, now)
            return Hold(
                UpdateState.PENDING,
                f"approval required ({APPROVAL_LABEL} on {', '.join(names)}): "
                f"podhook approve {reference} --digest {digest}",
            )
        ages = [(c, p.min_age) for c, p in policies if p.min_age]
        if ages:
            container, age = max(ages, key=lambda item: item[1] or 0)
            ready = seen + (age or 0)
            if now < ready:
                wake_later(self.redis, self.host, reference, ready)
                return Hold(
                    UpdateState.WAITING,
                    f"image {digest[:19]} first seen {format_time(seen)}; {MIN_AGE_LABEL} "
                    f"{container.labels[MIN_AGE_LABEL]} on {container.name} is reached at "
                    f"{format_time(ready)}",
                    until=ready,
                )
        closed = [
            (c, p.window, opens)
            for c, p in policies
            if p.window is not None and (opens := p.window.next_opening(now)) is not None
        ]
        if closed:
            container, window, opens = max(closed, key=lambda item: item[2])
            wake_later(self.redis, self.host, reference, opens)
            assert window is not None
            return Hold(
                UpdateState.WAITING,
                f"maintenance window {window.text!r} of {container.name} is closed; it opens "
                f"at {format_time(opens)}",
                until=opens,
            )
        return None

    def settled(self, reference: str, digest: str | None, rows: list[ContainerReport]) -> None:
        """Clear a pending approval the rows no longer need, and tell the reference's rollout
        how this host did."""
        reference = self._routed(reference)
        if not any(r.state is UpdateState.PENDING for r in rows):
            clear_pending(self.redis, self.host, reference)
        if policy_for(self.settings.rollouts, reference) is None:
            return
        # Without the digest (a handed-off restart completed later, say): the newest rollout.
        rollout = (
            rollout_of(self.redis, reference, digest)
            if digest
            else get_rollout(self.redis, reference)
        )
        if rollout is None or not rollout.may_update(self.host):
            return
        state, reason = _host_state(rows)
        if state is not None:
            record_host(
                self.redis,
                self.settings,
                rollout,
                self.host,
                state,
                reason,
                settings_now(self.settings),
            )

    def _routed(self, reference: str) -> str:
        """The reference as pushes name it (registry aliases applied), as rollouts key it."""
        return routed_reference(reference, self.settings.registry_aliases) or reference

    def _first_seen(self, reference: str, digest: str, now: float) -> float:
        key = FIRST_SEEN_KEY.format(reference=reference, digest=digest)
        self.redis.set(key, repr(now), nx=True, ex=FIRST_SEEN_TTL_SECONDS)
        return float(self.redis.get(key) or now)


def _host_state(rows: list[ContainerReport]) -> tuple[HostState | None, str]:
    """How a host did in a rollout, from its rows of the reference: failed (with the failing
    row's reason), updated, or None while it is still under way (retrying, waiting, handed
    off)."""
    failed = lasting_rows(rows)
    if failed:
        row = failed[0]
        return HostState.FAILED, f"{row.container_name}: {row.state.value}: {row.reason}"
    done = {UpdateState.UPDATED, UpdateState.UNCHANGED, UpdateState.SKIPPED}
    if all(r.state in done for r in rows):
        updated = sum(r.state is UpdateState.UPDATED for r in rows)
        return HostState.UPDATED, f"{updated} updated, {len(rows) - updated} already on it"
    return None, ""
