"""Converge this host's containers on what their references name: observe, decide, act, verify.

Two entry points share the acting part. ``converge`` answers a hint ("reference R was pushed,
its digest is D or unknown") for the containers of R; ``reconcile`` checks every labeled
container against its registry (one manifest HEAD per distinct reference), as `podman
auto-update` does. Either pulls only a container's own reference, restarts each unit once,
verifies it, and rolls every unit of a reference back together when one fails on the new
image, so that all units of a reference run the image its local tag names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from workers.attempts import Attempt, AttemptJournal, MemoryAttemptJournal
from workers.events import PushEvent
from workers.inventory import routed_reference
from workers.locks import LockTimeoutError, UnitLocks
from workers.podman_runtime import (
    AUTHFILE_LABEL,
    AUTOUPDATE_LABEL,
    UNIT_LABEL,
    Container,
    ContainerRuntime,
    ContainerRuntimeError,
    Image,
    PolicyRefusedError,
)
from workers.reference import InvalidReferenceError, parse_reference
from workers.report import ContainerReport, UpdateState, lasting_rows, retryable_rows
from workers.settings import Settings
from workers.systemd_units import SystemdUnreachableError, UnitError, UnitManager
from workers.update_policy import LabelError, read_policy

log = logging.getLogger("podhook.worker")

# Podman's policies (pkg/autoupdate): "registry" (and its old alias "image") compare with the
# registry; "local" with the newest local image of that name; "disabled" (or empty) opts out.
REGISTRY_POLICIES = frozenset({"registry", "image"})
LOCAL_POLICY = "local"
DISABLED_POLICIES = frozenset({"", "disabled"})
KNOWN_POLICIES = REGISTRY_POLICIES | DISABLED_POLICIES | {LOCAL_POLICY}

# The registry's digest of a reference: ``lookup(image_reference, authfile)``.
DigestLookup = Callable[[str, "str | None"], str]


class RestartHandoff(Protocol):
    """Who restarts the units that hold this worker, or its Redis, from outside them."""

    def holds(self, container: Container) -> bool:
        """Whether restarting the container's unit would stop this worker or its Redis."""
        ...

    def hand_off(self, changed: list[tuple[Container, Image]], rollback: bool) -> str:
        """Start restarting (and verifying, and rolling back) the units of ``changed`` outside
        this worker, without waiting; return what does it. Raises UnitError."""
        ...


@dataclass(frozen=True)
class Hold:
    """Why an update does not run now: ``state`` WAITING (for its rollout wave, a maintenance
    window or an image age; ``until`` says when it looks again, when known) or PENDING (for an
    approval), and ``reason`` in words for its rows."""

    state: UpdateState
    reason: str
    until: float | None = None


class UpdateGate(Protocol):
    """What decides whether an update may run now: rollouts across hosts and the containers'
    own update policies (workers/gates.py)."""

    def digest_for(self, reference: str, members: list[Container]) -> str | None:
        """The digest ``reference`` names now when deciding needs one and the push did not
        say it (a registry lookup), else None. Raises on a failed lookup."""
        ...

    def hold(self, reference: str, digest: str | None, behind: list[Container]) -> Hold | None:
        """Why the containers ``behind`` must not update to ``digest`` now, or None."""
        ...

    def settled(self, reference: str, digest: str | None, rows: list[ContainerReport]) -> None:
        """Take note of how this host's containers of ``reference`` ended (``rows``)."""
        ...


@dataclass(frozen=True)
class UpdateOptions:
    """How updates are applied: dry run, rollback, timeouts, the default authfile, aliases."""

    dry_run: bool = False
    rollback: bool = True
    restart_timeout: float = 120.0
    settle_seconds: float = 5.0
    authfile: str | None = None
    registry_aliases: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> UpdateOptions:
        """The options the settings name."""
        return cls(
            dry_run=settings.dry_run,
            rollback=settings.rollback,
            restart_timeout=settings.restart_timeout,
            settle_seconds=settings.settle_seconds,
            authfile=settings.authfile,
            registry_aliases=settings.registry_aliases,
        )


@dataclass
class UpdateOutcome:
    """The rows of one job on one host, one per container concerned."""

    rows: list[ContainerReport] = field(default_factory=list)

    @property
    def retryable(self) -> list[ContainerReport]:
        """Failed rows that changed nothing: another attempt may succeed."""
        return retryable_rows(self.rows)

    @property
    def lasting(self) -> list[ContainerReport]:
        """Failed or rolled-back rows that another attempt must not repeat on its own."""
        return lasting_rows(self.rows)


def _go_quote(text: str) -> str:
    return json.dumps(text)


def configuration_error(container: Container) -> str | None:
    """Why a labeled container cannot be auto-updated, in Podman's words, or None."""
    if container.policy not in KNOWN_POLICIES:
        valid = " ".join(_go_quote(p) for p in sorted(KNOWN_POLICIES - {""}))
        policy = _go_quote(container.policy)
        return f"invalid auto-update policy {policy}: valid policies are [{valid}]"
    if container.policy in DISABLED_POLICIES:
        return None
    if not container.image_reference or not container.image_id:
        return (
            f"internal error: no image found for ID {container.image_id}: container "
            f"{_go_quote(container.id)} was created from a root file system (--rootfs)"
        )
    if container.unit is None:
        return f"auto-updating container {_go_quote(container.id)}: no {UNIT_LABEL} label found"
    if container.policy in REGISTRY_POLICIES:
        try:
            ref = parse_reference(container.image_reference)
        except InvalidReferenceError as error:
            return f"auto-updating container {_go_quote(container.id)}: {error}"
        if not ref.fully_qualified:
            return (
                f"auto-updating container {_go_quote(container.id)}: image name "
                f"{_go_quote(container.image_reference)} must be fully qualified"
            )
    try:
        read_policy(container.labels)
    except LabelError as error:
        return f"auto-updating container {_go_quote(container.id)}: {error}"
    return None


class Updater:
    """Decides and carries out what this host's containers need to run their references."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        units: UnitManager,
        locks: UnitLocks,
        options: UpdateOptions | None = None,
        handoff: RestartHandoff | None = None,
        journal: AttemptJournal | None = None,
        job_id: str = "inline",
        gate: UpdateGate | None = None,
    ) -> None:
        self.runtime = runtime
        self.units = units
        self.locks = locks
        self.options = options or UpdateOptions()
        self.handoff = handoff
        self.journal = journal if journal is not None else MemoryAttemptJournal()
        self.job_id = job_id
        self.gate = gate

    # ---------------------------------------------------------------- entry points

    def apply(self, event: PushEvent) -> UpdateOutcome:
        """``converge`` on a push event's reference and digest."""
        return self.converge(event.reference, event.digest)

    def converge(self, reference: str, digest: str | None) -> UpdateOutcome:
        """Make the containers of ``reference`` (``registry/repository:tag``) run what it names.

        With ``digest``, containers that already run it are unchanged without a pull, and a
        pull that does not yield it is a retryable failure (a mirror or replica lagging behind
        the push). Without one, the reference is pulled and image ids compared. Containers of
        the "local" policy are not concerned by a registry push; misconfigured ones are
        ``failed`` rows. Raises ContainerRuntimeError when the containers cannot be listed.
        """
        started = time.monotonic()
        outcome = UpdateOutcome()
        members: list[Container] = []
        settled = self._finish_interrupted(outcome, lambda ref: ref == reference)
        finished = list(outcome.rows)  # updates cut short, finished now: the rollout hears them
        for container in self.runtime.list_autoupdate_containers():
            if routed_reference(container.image_reference, self.options.registry_aliases) != (
                reference
            ) or (container.name in settled):
                continue
            problem = configuration_error(container)
            if problem is not None:
                outcome.rows.append(_row(container, UpdateState.FAILED, problem))
            elif container.policy in REGISTRY_POLICIES:
                members.append(container)
            elif container.policy == LOCAL_POLICY:
                outcome.rows.append(
                    _row(
                        container, UpdateState.SKIPPED, "policy 'local': a push does not concern it"
                    )
                )
        if members:
            self._converge_registry(reference, members, digest, started, outcome, finished)
        else:
            self._settled(reference, digest, finished)
        return outcome

    def reconcile(self, lookup: DigestLookup) -> UpdateOutcome:
        """Check every labeled container of this host and update those behind.

        Registry containers: one ``lookup`` (a manifest HEAD) per distinct reference; a
        container whose image has that digest is unchanged, else its reference is converged
        on that digest (pulled, restarted, verified). Local containers: behind when the local
        image of their reference is not the one they run; their units restart without a pull.
        Raises ContainerRuntimeError when the containers cannot be listed.
        """
        started = time.monotonic()
        outcome = UpdateOutcome()
        registry: dict[str, list[Container]] = defaultdict(list)
        local: dict[str, list[Container]] = defaultdict(list)
        settled = self._finish_interrupted(outcome, lambda ref: True)
        finished = list(outcome.rows)
        for container in self.runtime.list_autoupdate_containers():
            if container.name in settled:
                continue
            problem = configuration_error(container)
            if problem is not None:
                outcome.rows.append(_row(container, UpdateState.FAILED, problem))
            elif container.policy in REGISTRY_POLICIES:
                ref = parse_reference(container.image_reference)
                if ref.digest is not None:
                    outcome.rows.append(_row(container, UpdateState.UNCHANGED, "pinned by digest"))
                else:
                    registry[container.image_reference].append(container)
            elif container.policy == LOCAL_POLICY:
                local[container.image_reference].append(container)
        for image_reference in sorted(registry):
            containers = registry[image_reference]
            authfile = self._authfile(containers[0])
            try:
                digest = lookup(image_reference, authfile)
            except Exception as error:  # noqa: BLE001 - any lookup failure is this reference's
                _fail_retryably(containers, f"checking {image_reference}: {error}", outcome)
                continue
            cut_short = [r for r in finished if r.image == image_reference]
            self._converge_registry(
                image_reference, containers, digest, started, outcome, cut_short
            )
        for image_reference in sorted(local):
            self._converge_local(image_reference, local[image_reference], started, outcome)
        return outcome

    # ---------------------------------------------------------------- decide

    def _authfile(self, container: Container) -> str | None:
        return container.labels.get(AUTHFILE_LABEL) or self.options.authfile

    def _converge_registry(
        self,
        reference: str,
        members: list[Container],
        digest: str | None,
        started: float,
        outcome: UpdateOutcome,
        finished: list[ContainerReport] | None = None,
    ) -> None:
        first = len(outcome.rows)
        if digest is None and self.gate is not None:
            try:
                digest = self.gate.digest_for(reference, members)
            except Exception as error:  # noqa: BLE001 - any lookup failure is this reference's
                reason = f"checking {reference} for its update policy: {error}"
                _fail_retryably(members, reason, outcome)
                return
        self._decide_registry(reference, members, digest, started, outcome)
        self._settled(reference, digest, [*(finished or []), *outcome.rows[first:]])

    def _settled(self, reference: str, digest: str | None, rows: list[ContainerReport]) -> None:
        """Tell the gate how the reference ended here; its failing never fails the update."""
        if self.gate is None:
            return
        try:
            self.gate.settled(reference, digest, rows)
        except Exception as error:  # noqa: BLE001 - the reconcile or the next job tells it again
            log.warning("telling the rollout of %s how this host did: %s", reference, error)

    def _decide_registry(
        self,
        reference: str,
        members: list[Container],
        digest: str | None,
        started: float,
        outcome: UpdateOutcome,
    ) -> None:
        def elapsed() -> float:
            return round(time.monotonic() - started, 3)

        behind: list[Container] = []
        runs: dict[str, bool] = {}  # by image id: one inspect however many containers run it
        for container in members:
            if digest and container.image_id not in runs:
                runs[container.image_id] = self._runs_digest(container, digest)
            if digest and runs[container.image_id]:
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.UNCHANGED,
                        f"already runs {digest}",
                        old=container.image_id,
                        new=container.image_id,
                        timings={"finished": elapsed()},
                    )
                )
            else:
                behind.append(container)
        if not behind:
            return
        try:
            hold = self.gate.hold(reference, digest, behind) if self.gate is not None else None
        except Exception as error:  # noqa: BLE001 - Redis, a rollout that kept changing
            reason = f"deciding whether {reference} may update now: {error}"
            _fail_retryably(behind, reason, outcome)
            return
        if hold is not None:
            for container in behind:
                outcome.rows.append(
                    _row(
                        container,
                        hold.state,
                        hold.reason,
                        old=container.image_id,
                        timings={"finished": elapsed()},
                        until=hold.until,
                    )
                )
            return
        if self.options.dry_run:
            what = f"{digest} is available" if digest else "the tag was pushed"
            for container in behind:
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.PENDING,
                        f"dry run: {what}; would pull {container.image_reference} "
                        f"and restart {container.unit}",
                        old=container.image_id,
                    )
                )
            return

        pulled: dict[str, Image] = {}
        changed: list[tuple[Container, Image]] = []
        for container in behind:
            image_reference = container.image_reference
            try:
                if image_reference not in pulled:
                    pulled[image_reference] = self.runtime.pull(
                        image_reference, self._authfile(container)
                    )
                    log.info(
                        "pulled %s: image %s",
                        image_reference,
                        pulled[image_reference].id[:12],
                        extra={"unit": container.unit, "container": container.name},
                    )
            except ContainerRuntimeError as error:
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.FAILED,
                        str(error),
                        old=container.image_id,
                        timings={"finished": elapsed()},
                        # The signature policy refuses the same image however often asked.
                        retryable=not isinstance(error, PolicyRefusedError),
                    )
                )
                continue
            image = pulled[image_reference]
            name = parse_reference(image_reference).name
            if digest and not image.has_digest(name, digest):
                # The tag must not stay on what the pull gave (a newer push, perhaps one its
                # rollout or window still holds): the next restart of the unit would run it.
                with contextlib.suppress(ContainerRuntimeError):
                    self.runtime.tag(container.image_id, image_reference)
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.FAILED,
                        f"pulling {image_reference} gave image {image.id[:12]}, not the pushed "
                        f"{digest}: the registry does not serve it yet",
                        old=container.image_id,
                        new=image.id,
                        timings={"pulled": elapsed(), "finished": elapsed()},
                        retryable=True,
                    )
                )
            elif image.id == container.image_id:
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.UNCHANGED,
                        "the pulled image is the one running",
                        old=image.id,
                        new=image.id,
                        timings={"pulled": elapsed(), "finished": elapsed()},
                    )
                )
            else:
                changed.append((container, image))
        if changed:
            self._restart_units(changed, elapsed, outcome)

    def _converge_local(
        self, image_reference: str, members: list[Container], started: float, outcome: UpdateOutcome
    ) -> None:
        def elapsed() -> float:
            return round(time.monotonic() - started, 3)

        try:
            newest = self.runtime.get_image(image_reference)
        except ContainerRuntimeError as error:
            for container in members:
                outcome.rows.append(_row(container, UpdateState.FAILED, str(error), retryable=True))
            return
        changed = []
        for container in members:
            if newest.id == container.image_id:
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.UNCHANGED,
                        "runs the newest local image",
                        old=container.image_id,
                        new=container.image_id,
                    )
                )
            elif self.options.dry_run:
                outcome.rows.append(
                    _row(
                        container,
                        UpdateState.PENDING,
                        f"dry run: local image {newest.id[:12]} is newer; would restart "
                        f"{container.unit}",
                        old=container.image_id,
                    )
                )
            else:
                changed.append((container, newest))
        if changed:
            self._restart_units(changed, elapsed, outcome)

    def _runs_digest(self, container: Container, digest: str) -> bool:
        try:
            current = self.runtime.get_image(container.image_id)
        except ContainerRuntimeError:
            return False  # the pull will tell
        return current.has_digest(parse_reference(container.image_reference).name, digest)

    # ---------------------------------------------------------------- act and verify

    def _restart_units(
        self,
        changed: list[tuple[Container, Image]],
        elapsed: Callable[[], float],
        outcome: UpdateOutcome,
    ) -> None:
        """Restart each unit of the changed containers once, in order; when one fails on the
        new image, roll back every unit of the reference restarted so far, together."""
        if self.handoff is not None and any(self.handoff.holds(c) for c, _ in changed):
            self._hand_off(changed, elapsed, outcome)
            return
        pulled_at = elapsed()
        by_unit: dict[str, list[tuple[Container, Image]]] = defaultdict(list)
        for container, image in changed:
            assert container.unit is not None
            by_unit[container.unit].append((container, image))
        done: list[str] = []
        already: list[str] = []
        for index, unit in enumerate(sorted(by_unit)):
            pairs = by_unit[unit]
            expected = {c.name: image.id for c, image in pairs}
            try:
                with self.locks.hold(unit):
                    # Another worker (a reconcile) may have updated the unit while this one
                    # waited for the lock: decide on its containers as they are now.
                    running = self._running_images(unit) or {}
                    if all(running.get(name) == image_id for name, image_id in expected.items()):
                        already.append(unit)
                        continue
                    log.info("restarting %s on the new image", unit, extra={"unit": unit})
                    attempt = _attempt_of(unit, self.job_id, pairs)
                    problem = self._restart_and_verify(unit, expected, attempt)
                    if problem is None:
                        self.journal.clear(unit)
            except _Unverified as unverified:
                # Restarted, but Podman did not answer to show what runs: neither success nor a
                # reason to roll back. The journal keeps the attempt; the next one verifies.
                for u in sorted(by_unit)[index:]:
                    reason = str(unverified) if u == unit else f"not restarted: {unverified}"
                    outcome.rows += _pair_rows(
                        by_unit[u], UpdateState.FAILED, reason, retryable=True
                    )
                return
            except (LockTimeoutError, ContainerRuntimeError) as error:
                # Raised before any restart: nothing changed, another attempt may succeed.
                outcome.rows += _pair_rows(pairs, UpdateState.FAILED, str(error), retryable=True)
                continue
            if problem is None:
                log.info("%s is active on the new image", unit, extra={"unit": unit})
                done.append(unit)
                continue
            log.warning("%s failed on the new image: %s", unit, problem, extra={"unit": unit})
            self._fail_reference(
                by_unit,
                done,
                unit,
                problem,
                sorted(by_unit)[index + 1 :],
                pulled_at,
                elapsed,
                outcome,
            )
            return
        finished = elapsed()
        for unit in already:
            outcome.rows += _pair_rows(
                by_unit[unit],
                UpdateState.UNCHANGED,
                f"{unit} already runs the new image",
                timings={"finished": finished},
                already=True,
            )
        for unit in done:
            outcome.rows += _pair_rows(
                by_unit[unit],
                UpdateState.UPDATED,
                f"restarted {unit} on the new image",
                timings={"pulled": pulled_at, "active": finished, "finished": finished},
            )

    def _hand_off(
        self,
        changed: list[tuple[Container, Image]],
        elapsed: Callable[[], float],
        outcome: UpdateOutcome,
    ) -> None:
        """The reference's units include one that holds this worker (or its Redis): hand all
        of them, together, to the handoff, and keep their locks while it works."""
        assert self.handoff is not None
        units = sorted({c.unit for c, _ in changed if c.unit})
        # However long the handoff may take: a delay, then a restart and a rollback, each
        # with its settle window.
        keep_for = 60 + 2 * (self.options.restart_timeout + self.options.settle_seconds)
        with contextlib.ExitStack() as held:
            try:
                for unit in units:
                    held.enter_context(self.locks.hold(unit))
                running = {
                    name: image_id
                    for unit in units
                    for name, image_id in (self._running_images(unit) or {}).items()
                }
                if all(running.get(c.name) == image.id for c, image in changed):
                    for unit in units:
                        outcome.rows += _pair_rows(
                            [(c, image) for c, image in changed if c.unit == unit],
                            UpdateState.UNCHANGED,
                            f"{unit} already runs the new image",
                            timings={"finished": elapsed()},
                            already=True,
                        )
                    return
                transient = self.handoff.hand_off(changed, self.options.rollback)
                for unit in units:
                    self.locks.keep(unit, keep_for)
            except (LockTimeoutError, UnitError) as error:
                outcome.rows += _pair_rows(changed, UpdateState.FAILED, str(error), retryable=True)
                return
        log.info("restart of %s handed to %s", " ".join(units), transient)
        for unit in units:
            outcome.rows += _pair_rows(
                [(c, image) for c, image in changed if c.unit == unit],
                UpdateState.HANDED_OFF,
                f"{unit} runs this worker or its Redis: its restart is handed to {transient}, "
                "which rolls back on failure; this row is completed when that is over",
                timings={"pulled": elapsed(), "finished": elapsed()},
            )

    def _fail_reference(
        self,
        by_unit: dict[str, list[tuple[Container, Image]]],
        done: list[str],
        failed_unit: str,
        problem: str,
        untouched: list[str],
        pulled_at: float,
        elapsed: Callable[[], float],
        outcome: UpdateOutcome,
    ) -> None:
        """One unit failed on the new image: put the reference's tags back on the old images
        and restart the failed unit and those already updated, or report why that failed."""
        restarted = [*done, failed_unit]
        if not self.options.rollback:
            states = {failed_unit: (UpdateState.FAILED, f"{problem}; rollback is off")}
            for unit in done:
                states[unit] = (UpdateState.UPDATED, f"restarted {unit} on the new image")
        else:
            states = self._roll_back(by_unit, restarted, failed_unit, problem)
        for unit in restarted:
            state, reason = states[unit]
            outcome.rows += _pair_rows(
                by_unit[unit], state, reason, timings={"pulled": pulled_at, "finished": elapsed()}
            )
        for unit in untouched:
            outcome.rows += _pair_rows(
                by_unit[unit],
                UpdateState.FAILED,
                f"not restarted: {failed_unit} failed on the same new image ({problem})",
                timings={"finished": elapsed()},
            )

    def _roll_back(
        self,
        by_unit: dict[str, list[tuple[Container, Image]]],
        restarted: list[str],
        failed_unit: str,
        problem: str,
    ) -> dict[str, tuple[UpdateState, str]]:
        for unit in restarted:
            self.journal.record(_attempt_of(unit, self.job_id, by_unit[unit], "rolling_back"))
        previous = {c.image_reference: c.image_id for pairs in by_unit.values() for c, _ in pairs}
        try:
            self._tag_all(previous)
        except ContainerRuntimeError as error:
            reason = f"{problem}; rollback failed: {error}"
            return {unit: (UpdateState.FAILED, reason) for unit in restarted}
        states: dict[str, tuple[UpdateState, str]] = {}
        for unit in restarted:
            cause = problem if unit == failed_unit else f"{failed_unit} failed: {problem}"
            try:
                with self.locks.hold(unit):
                    self.units.reset_failed(unit)  # a crash loop may have hit its start limit
                    second = self._restart_and_verify(
                        unit, {c.name: c.image_id for c, _ in by_unit[unit]}
                    )
            except LockTimeoutError as error:
                second = str(error)
            except _Unverified as unverified:
                # The journal keeps the rollback: the next attempt checks that it held.
                states[unit] = (UpdateState.FAILED, f"{cause}; rolling back: {unverified}")
                continue
            self.journal.clear(unit)
            if second is None:
                log.warning("%s rolled back to the previous image", unit, extra={"unit": unit})
                states[unit] = (
                    UpdateState.ROLLED_BACK,
                    f"{cause}; rolled back to the previous image",
                )
            else:
                states[unit] = (UpdateState.FAILED, f"{cause}; rollback failed: {second}")
        return states

    def _restart_and_verify(
        self, unit: str, expected_images: dict[str, str], attempt: Attempt | None = None
    ) -> str | None:
        """Restart the unit and check it stays up on the expected images; with ``attempt``,
        journal each step first.

        Returns None on success, or what went wrong, naming the unit. Raises _Unverified when
        Podman does not answer to show what the unit runs.
        """
        if attempt is not None:
            self.journal.record(attempt)
        try:
            result = self.units.restart(unit, self.options.restart_timeout)
        except SystemdUnreachableError as error:
            # The restart may or may not have happened: the journal's next attempt looks.
            raise _Unverified(str(error)) from error
        except UnitError as error:
            return str(error)
        if result != "done":
            return f"restarting {unit!r}: job result {result!r}"
        if attempt is not None:
            attempt.phase = "verifying"
            self.journal.record(attempt)
        return self._verify(unit, expected_images)

    def _verify(self, unit: str, expected_images: dict[str, str]) -> str | None:
        """Watch the unit for the settle window (active, not restarted by systemd), then check
        its containers run the expected images. None when they do, else what went wrong.
        Raises _Unverified when Podman does not answer."""
        try:
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
        except SystemdUnreachableError as error:
            raise _Unverified(str(error)) from error
        except UnitError as error:
            return str(error)
        running = self._running_images(unit)
        if running is None:
            raise _Unverified(f"restarted {unit!r}, but Podman did not answer to show what it runs")
        for name, image_id in expected_images.items():
            if running.get(name) != image_id:
                now = running.get(name)
                shown = now[:12] if now else "no running container"
                return (
                    f"restarting {unit!r}: container {name!r} runs {shown}, not {image_id[:12]} "
                    "(units must be generated with `podman generate systemd --new` or Quadlet)"
                )
        return self._wait_healthy(unit, sorted(expected_images))

    def _wait_healthy(self, unit: str, names: list[str]) -> str | None:
        """Containers that have a health check must report healthy within the restart
        timeout; those without one are done with the settle window. Runs each check as
        `podman healthcheck run` does, until it says healthy or unhealthy. None when all are
        healthy, else what failed, naming the check. Raises _Unverified when Podman stays
        silent."""
        deadline = time.monotonic() + self.options.restart_timeout
        pending = list(names)
        checks: dict[str, str] = {}
        silent: ContainerRuntimeError | None = None
        while True:
            for name in list(pending):
                try:
                    health = self.runtime.check_health(name)
                except ContainerRuntimeError as error:
                    silent = error
                    continue
                silent = None
                if health is None or health.status == "healthy":
                    pending.remove(name)
                    continue
                checks[name] = health.check
                if health.status == "unhealthy":
                    said = f": {health.output[:300]}" if health.output else ""
                    return (
                        f"restarting {unit!r}: container {name!r} is unhealthy: its health "
                        f"check `{health.check}` failed{said}"
                    )
            if not pending:
                return None
            if time.monotonic() >= deadline:
                if silent is not None:
                    raise _Unverified(f"checking the health of {unit!r}: {silent}")
                name = pending[0]
                return (
                    f"restarting {unit!r}: container {name!r} did not become healthy within "
                    f"{self.options.restart_timeout:g}s (health check `{checks.get(name, '?')}`)"
                )
            time.sleep(_HEALTH_POLL)

    def _running_images(self, unit: str) -> dict[str, str] | None:
        """Image ids of the unit's running containers by name; None if Podman stays silent.

        Podman's API may pause for a while (the service restarting, other units restarting
        meanwhile): a silence is waited out, up to a bound, before giving up on an answer.
        """
        deadline = time.monotonic() + min(60.0, self.options.restart_timeout)
        delay = 0.5
        while True:
            try:
                return {
                    c.name: c.image_id
                    for c in self.runtime.list_autoupdate_containers()
                    if c.unit == unit
                }
            except ContainerRuntimeError as error:
                if time.monotonic() + delay > deadline:
                    log.warning("listing containers of %s: %s; giving up", unit, error)
                    return None
                log.warning("listing containers of %s: %s; trying again", unit, error)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _tag_all(self, tags: dict[str, str]) -> None:
        """Point each reference at its image id, waiting out a short Podman silence.
        Raises ContainerRuntimeError when Podman stays silent."""
        deadline = time.monotonic() + min(60.0, self.options.restart_timeout)
        for image_reference, image_id in sorted(tags.items()):
            delay = 0.5
            while True:
                try:
                    self.runtime.tag(image_id, image_reference)
                    break
                except ContainerRuntimeError:
                    if time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)

    # ---------------------------------------------------------------- interrupted updates

    def _finish_interrupted(
        self, outcome: UpdateOutcome, concerns: Callable[[str], bool]
    ) -> set[str]:
        """Finish the journal's updates of units whose references ``concerns`` accepts: an
        update cut short (a killed worker, a timeout) is verified, kept when the unit is up on
        the new image, rolled back otherwise. Returns the names of the containers settled, for
        the caller to leave alone; an update whose restart never happened is cleared only."""
        settled: set[str] = set()
        for attempt in self.journal.unfinished():
            references = {
                routed_reference(r, self.options.registry_aliases) or r for r in attempt.references
            }
            if not any(concerns(r) for r in references):
                continue
            try:
                with self.locks.hold(attempt.unit):
                    settled |= self._finish_attempt(attempt, outcome)
            except LockTimeoutError as error:
                for container in _attempt_containers(attempt):
                    outcome.rows.append(
                        _row(container, UpdateState.FAILED, str(error), retryable=True)
                    )
                settled |= {c["name"] for c in attempt.containers}
        return settled

    def _finish_attempt(self, attempt: Attempt, outcome: UpdateOutcome) -> set[str]:
        unit = attempt.unit
        old = {c["name"]: c["old"] for c in attempt.containers}
        new = {c["name"]: c["new"] for c in attempt.containers}
        containers = _attempt_containers(attempt)
        names = set(old)
        cut = f"an update of {unit} was cut short while {attempt.phase}"

        def rows(state: UpdateState, reason: str, retryable: bool = False) -> set[str]:
            for container in containers:
                outcome.rows.append(
                    _row(
                        container,
                        state,
                        reason,
                        old=old[container.name],
                        new=new[container.name],
                        retryable=retryable,
                    )
                )
            return names

        running = self._running_images(unit)
        if running is None:
            return rows(UpdateState.FAILED, f"{cut}; Podman did not answer", retryable=True)
        try:
            active = self.units.get_state(unit).is_active
        except UnitError as error:
            return rows(UpdateState.FAILED, f"{cut}; {error}", retryable=True)
        on_old = all(running.get(name) == image for name, image in old.items())
        on_new = all(running.get(name) == image for name, image in new.items())
        try:
            if attempt.phase == "restarting" and on_old and active:
                log.info("%s: the restart never happened; deciding afresh", cut)
                self.journal.clear(unit)
                return set()
            if attempt.phase == "rolling_back" and on_old:
                if self._verify(unit, old) is None:
                    self.journal.clear(unit)
                    return rows(UpdateState.ROLLED_BACK, f"{cut}; the rollback holds")
            elif on_new and self._verify(unit, new) is None:
                self.journal.clear(unit)
                log.info("%s; it is up on the new image", cut, extra={"unit": unit})
                return rows(UpdateState.UPDATED, f"{cut}; it is up on the new image")
            if not self.options.rollback:
                self.journal.clear(unit)
                return rows(UpdateState.FAILED, f"{cut}; not up on the new image; rollback is off")
            attempt.phase = "rolling_back"
            attempt.job = self.job_id
            self.journal.record(attempt)
            log.warning("%s; not up on the new image: rolling back", cut, extra={"unit": unit})
            self._tag_all({c["image"]: c["old"] for c in attempt.containers})
            self.units.reset_failed(unit)
            problem = self._restart_and_verify(unit, old)
        except _Unverified as unverified:
            return rows(UpdateState.FAILED, f"{cut}; {unverified}", retryable=True)
        except ContainerRuntimeError as error:
            return rows(UpdateState.FAILED, f"{cut}; rolling back: {error}", retryable=True)
        self.journal.clear(unit)
        if problem is None:
            return rows(
                UpdateState.ROLLED_BACK,
                f"{cut}; it was not up on the new image: rolled back to the previous image",
            )
        return rows(UpdateState.FAILED, f"{cut}; rollback failed: {problem}")


# Seconds between two runs of a container's health check while it is starting.
_HEALTH_POLL = 1.0


def _pair_rows(
    pairs: list[tuple[Container, Image]],
    state: UpdateState,
    reason: str,
    *,
    timings: dict[str, float] | None = None,
    retryable: bool = False,
    already: bool = False,
) -> list[ContainerReport]:
    """One row per (container, new image) pair, from the container's image to the new one
    (``already``: the container runs the new image, so both are it)."""
    return [
        _row(
            container,
            state,
            reason,
            old=image.id if already else container.image_id,
            new=image.id,
            timings=dict(timings or {}),
            retryable=retryable,
        )
        for container, image in pairs
    ]


class _Unverified(Exception):
    """A restart whose outcome could not be read: Podman did not answer."""


def _attempt_of(
    unit: str, job: str, pairs: list[tuple[Container, Image]], phase: str = "restarting"
) -> Attempt:
    return Attempt(
        unit=unit,
        job=job,
        phase=phase,
        containers=[
            {
                "name": c.name,
                "id": c.id,
                "image": c.image_reference,
                "policy": c.policy,
                "old": c.image_id,
                "new": image.id,
            }
            for c, image in pairs
        ],
    )


def _attempt_containers(attempt: Attempt) -> list[Container]:
    """The attempt's containers as they were before it (for report rows)."""
    return [
        Container(
            id=c["id"],
            name=c["name"],
            image_reference=c["image"],
            image_id=c["old"],
            labels={AUTOUPDATE_LABEL: c["policy"], UNIT_LABEL: attempt.unit},
        )
        for c in attempt.containers
    ]


def _fail_retryably(containers: list[Container], reason: str, outcome: UpdateOutcome) -> None:
    """A failed row for each of ``containers`` that changed nothing: worth another attempt."""
    for container in containers:
        outcome.rows.append(_row(container, UpdateState.FAILED, reason, retryable=True))


def _row(
    container: Container,
    state: UpdateState,
    reason: str,
    *,
    old: str | None = None,
    new: str | None = None,
    timings: dict[str, float] | None = None,
    retryable: bool = False,
    until: float | None = None,
) -> ContainerReport:
    return ContainerReport(
        container_id=container.id,
        container_name=container.name,
        unit=container.unit,
        image=container.image_reference,
        policy=container.policy,
        state=state,
        reason=reason,
        old_image=old if old is not None else (container.image_id or None),
        new_image=new,
        timings=timings or {},
        retryable=retryable,
        until=until,
    )
