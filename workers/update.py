"""Apply one push on this host: match containers, pull their own references, restart, roll back."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from workers.events import PushEvent
from workers.locks import LockTimeoutError, UnitLocks
from workers.podman_runtime import (
    AUTHFILE_LABEL,
    Container,
    ContainerRuntime,
    ContainerRuntimeError,
    Image,
)
from workers.reference import ImageRef, InvalidReferenceError, parse_reference
from workers.report import ContainerReport, UpdateState
from workers.systemd_units import UnitError, UnitManager

log = logging.getLogger("podhook.worker")

# Podman's policies: "registry" (and its old alias "image") pull from the registry; "local"
# only compares with local storage, so a registry push has nothing to do with it.
REGISTRY_POLICIES = frozenset({"registry", "image"})


@dataclass(frozen=True)
class UpdateOptions:
    """How updates are applied: dry run, rollback, timeouts and the default authfile."""

    dry_run: bool = False
    rollback: bool = True
    restart_timeout: float = 120.0
    settle_seconds: float = 5.0
    authfile: str | None = None


@dataclass
class UpdateOutcome:
    """The rows of one push on one host, and whether a failure is worth another attempt.

    ``transient`` lists failures that changed nothing (a pull that failed, say), after which
    retrying the job may succeed; restarts that failed are never retried automatically.
    """

    rows: list[ContainerReport] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)


class _Member:
    """A matched container and its parsed reference, while its unit is being updated."""

    def __init__(self, container: Container, ref: ImageRef) -> None:
        self.container = container
        self.ref = ref


class Updater:
    """Decides and carries out what a push means for the containers of this host."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        units: UnitManager,
        locks: UnitLocks,
        options: UpdateOptions | None = None,
    ) -> None:
        self.runtime = runtime
        self.units = units
        self.locks = locks
        self.options = options or UpdateOptions()

    def apply(self, event: PushEvent) -> UpdateOutcome:
        """Update every container whose own reference names the pushed registry, repo and tag.

        Containers of one unit are handled together under the unit's lock and restart it once.
        Raises ContainerRuntimeError when the containers cannot be listed at all.
        """
        started = time.monotonic()
        outcome = UpdateOutcome()
        by_unit: dict[str, list[_Member]] = defaultdict(list)
        for container in self.runtime.list_autoupdate_containers():
            member_or_row = self._classify(container, event)
            if isinstance(member_or_row, ContainerReport):
                outcome.rows.append(member_or_row)
            elif member_or_row is not None:
                assert container.unit is not None
                by_unit[container.unit].append(member_or_row)
        for unit in sorted(by_unit):
            try:
                with self.locks.hold(unit):
                    # Another worker may have restarted this unit while we waited for the
                    # lock: decide on the containers as they are now, not as they were listed.
                    members = [
                        member
                        for container in self.runtime.list_autoupdate_containers()
                        if container.unit == unit
                        and isinstance(member := self._classify(container, event), _Member)
                    ]
                    self._update_unit(unit, members, event, started, outcome)
            except (ContainerRuntimeError, LockTimeoutError) as error:
                # Raised before any restart (restarts report their own failures): nothing
                # changed, so the job may try again; the other units go on.
                reason = str(error)
                outcome.transient.append(reason)
                reported = {row.container_id for row in outcome.rows}
                for member in by_unit[unit]:
                    if member.container.id not in reported:
                        outcome.rows.append(
                            _row(
                                member.container,
                                member.ref,
                                UpdateState.FAILED,
                                reason,
                                old=member.container.image_id,
                            )
                        )
        return outcome

    def _classify(self, container: Container, event: PushEvent) -> _Member | ContainerReport | None:
        """A member to update, a skipped row, or None when the push does not concern it."""
        try:
            ref = parse_reference(container.image_reference)
        except InvalidReferenceError:
            return None
        if ref.fully_qualified:
            if not (ref.registry == event.registry and ref.repository == event.repository):
                return None
        # A short name ("app:1") could mean the pushed image on any registry of the search
        # list; it is reported, never pulled.
        elif event.repository not in (ref.repository, ref.repository.removeprefix("library/")):
            return None
        # A reference pinned by digest names one image for good, whatever the tag does.
        if ref.tag != event.tag or ref.digest is not None:
            return None

        def skipped(reason: str) -> ContainerReport:
            return _row(container, ref, UpdateState.SKIPPED, reason)

        if container.policy not in REGISTRY_POLICIES:
            return skipped(f"auto-update policy {container.policy!r} is not 'registry'")
        if not ref.fully_qualified:
            return skipped(
                f"image reference {container.image_reference!r} is not fully qualified; "
                "use registry/repository:tag"
            )
        if container.unit is None:
            return skipped("no PODMAN_SYSTEMD_UNIT label: the container is not run by systemd")
        return _Member(container, ref)

    def _update_unit(
        self,
        unit: str,
        members: list[_Member],
        event: PushEvent,
        started: float,
        outcome: UpdateOutcome,
    ) -> None:
        def elapsed() -> float:
            return round(time.monotonic() - started, 3)

        pending: list[_Member] = []
        for member in members:
            current = self.runtime.get_image(member.container.image_id)
            if event.digest and current.has_digest(member.ref.name, event.digest):
                outcome.rows.append(
                    _row(
                        member.container,
                        member.ref,
                        UpdateState.UNCHANGED,
                        f"already runs {event.digest}",
                        old=current.id,
                        new=current.id,
                        timings={"finished": elapsed()},
                    )
                )
            else:
                pending.append(member)
        if not pending:
            return
        if self.options.dry_run:
            for member in pending:
                what = f"{event.digest} is available" if event.digest else "the tag was pushed"
                outcome.rows.append(
                    _row(
                        member.container,
                        member.ref,
                        UpdateState.PENDING,
                        f"dry run: {what}; would pull {member.ref} and restart {unit}",
                        old=member.container.image_id,
                    )
                )
            return

        pulled: dict[str, Image] = {}
        changed: list[tuple[_Member, Image]] = []
        for member in pending:
            reference = member.container.image_reference
            authfile = member.container.labels.get(AUTHFILE_LABEL) or self.options.authfile
            try:
                if reference not in pulled:
                    pulled[reference] = self.runtime.pull(reference, authfile)
                    log.info(
                        "pulled %s: image %s",
                        reference,
                        pulled[reference].id[:12],
                        extra={"unit": unit, "container": member.container.name},
                    )
            except ContainerRuntimeError as error:
                reason = str(error)
                outcome.transient.append(reason)
                outcome.rows.append(
                    _row(
                        member.container,
                        member.ref,
                        UpdateState.FAILED,
                        reason,
                        old=member.container.image_id,
                        timings={"finished": elapsed()},
                    )
                )
                continue
            image = pulled[reference]
            if image.id == member.container.image_id:
                outcome.rows.append(
                    _row(
                        member.container,
                        member.ref,
                        UpdateState.UNCHANGED,
                        "the pulled image is the one running",
                        old=image.id,
                        new=image.id,
                        timings={"pulled": elapsed(), "finished": elapsed()},
                    )
                )
            else:
                changed.append((member, image))
        if not changed:
            return
        pulled_at = elapsed()

        log.info("restarting %s on the new image", unit, extra={"unit": unit})
        problem = self._restart_and_verify(unit, {m.container.name: new.id for m, new in changed})
        if problem is None:
            log.info(
                "%s is active on %s",
                unit,
                ", ".join(sorted({n.id[:12] for _, n in changed})),
                extra={"unit": unit},
            )
            done = elapsed()
            for member, new in changed:
                outcome.rows.append(
                    _row(
                        member.container,
                        member.ref,
                        UpdateState.UPDATED,
                        f"restarted {unit} on the new image",
                        old=member.container.image_id,
                        new=new.id,
                        timings={"pulled": pulled_at, "active": done, "finished": done},
                    )
                )
            return

        log.warning("%s failed on the new image: %s", unit, problem, extra={"unit": unit})
        state, reason = UpdateState.FAILED, f"{problem}; rollback is off"
        if self.options.rollback:
            state, reason = self._roll_back(unit, changed, problem)
        for member, new in changed:
            outcome.rows.append(
                _row(
                    member.container,
                    member.ref,
                    state,
                    reason,
                    old=member.container.image_id,
                    new=new.id,
                    timings={"pulled": pulled_at, "finished": elapsed()},
                )
            )

    def _roll_back(
        self, unit: str, changed: list[tuple[_Member, Image]], problem: str
    ) -> tuple[UpdateState, str]:
        """Tag the previous images back onto the references and restart the unit once more."""
        try:
            for member, _new in changed:
                self.runtime.tag(member.container.image_id, member.container.image_reference)
        except ContainerRuntimeError as error:
            return UpdateState.FAILED, f"{problem}; rollback failed: {error}"
        second = self._restart_and_verify(
            unit, {m.container.name: m.container.image_id for m, _ in changed}
        )
        if second is None:
            log.warning("%s rolled back to the previous image", unit, extra={"unit": unit})
            return UpdateState.ROLLED_BACK, f"{problem}; rolled back to the previous image"
        return UpdateState.FAILED, f"{problem}; rollback failed: {second}"

    def _restart_and_verify(self, unit: str, expected_images: dict[str, str]) -> str | None:
        """Restart the unit and check it stays up on the expected images.

        Returns None on success, or what went wrong, naming the unit.
        """
        try:
            result = self.units.restart(unit, self.options.restart_timeout)
            if result != "done":
                return f"restarting {unit!r}: job result {result!r}"
            # Read after the restart: systemd resets NRestarts when a unit is started by hand.
            before = self.units.get_state(unit).restarts
            # A container that exits right after start still lets the start job finish
            # "done"; watch the unit for a while before calling the restart a success.
            deadline = time.monotonic() + self.options.settle_seconds
            while True:
                state = self.units.get_state(unit)
                if not state.is_active:
                    return f"restarting {unit!r}: unit is {state.active_state} ({state.sub_state})"
                if state.restarts > before:
                    return f"restarting {unit!r}: systemd restarted it again (crash loop)"
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.25, self.options.settle_seconds))
        except UnitError as error:
            return str(error)
        running = self._running_images(unit)
        if running is None:
            return f"checking {unit!r} after the restart: Podman did not answer"
        for name, image_id in expected_images.items():
            if running.get(name) != image_id:
                now = running.get(name)
                shown = now[:12] if now else "no running container"
                return (
                    f"restarting {unit!r}: container {name!r} runs {shown}, not {image_id[:12]} "
                    "(units must be generated with `podman generate systemd --new` or Quadlet)"
                )
        return None

    def _running_images(self, unit: str) -> dict[str, str] | None:
        """Image ids of the unit's running containers by name; None if Podman keeps failing.

        Other units restart meanwhile (other workers), so a listing may fail once for reasons
        that have nothing to do with this unit: it is tried again before giving up.
        """
        for attempt in range(3):
            try:
                return {
                    c.name: c.image_id
                    for c in self.runtime.list_autoupdate_containers()
                    if c.unit == unit
                }
            except ContainerRuntimeError as error:
                log.warning("listing containers after restarting %s: %s", unit, error)
                time.sleep(0.5 * (attempt + 1))
        return None


def _row(
    container: Container,
    ref: ImageRef,
    state: UpdateState,
    reason: str,
    *,
    old: str | None = None,
    new: str | None = None,
    timings: dict[str, float] | None = None,
) -> ContainerReport:
    return ContainerReport(
        container_id=container.id,
        container_name=container.name,
        unit=container.unit,
        image=container.image_reference,
        policy=container.policy,
        state=state,
        reason=reason,
        old_image=old,
        new_image=new,
        timings=timings or {},
    )
