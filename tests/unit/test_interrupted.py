"""Updates cut short (a killed worker, a timeout) are finished by the next attempt, from the
journal each attempt writes before its steps; a silent Podman is never a reason to roll back."""

import pytest

from tests.unit.fakes import FakeLocks, FakeRuntime, FakeUnits
from workers.attempts import Attempt, MemoryAttemptJournal
from workers.podman_runtime import ContainerRuntimeError
from workers.report import UpdateState
from workers.systemd_units import SystemdUnreachableError, UnitState
from workers.update import UpdateOptions, Updater

REF = "registry.example.com/app:1"
V1, V2 = "1" * 64, "2" * 64
D2 = "sha256:" + "b" * 64
UNIT = "web.service"


@pytest.fixture
def runtime():
    runtime = FakeRuntime()
    runtime.add_image(V1)
    runtime.registry[REF] = runtime.add_image(V2, f"registry.example.com/app@{D2}")
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT=UNIT)
    return runtime


def attempt(phase, job="killed-job"):
    container = {"name": "web", "id": "id-web", "image": REF, "policy": "registry"}
    return Attempt(UNIT, job, phase, [{**container, "old": V1, "new": V2}])


def next_attempt(runtime, journal, units=None, **options):
    units = units or FakeUnits(runtime)
    options = UpdateOptions(settle_seconds=0, **options)
    return Updater(runtime, units, FakeLocks(), options, journal=journal, job_id="next"), units


def killed_after_restart(runtime, journal, phase="verifying"):
    """The state a worker killed after restarting the unit on V2 leaves behind."""
    runtime.pull(REF)
    runtime.recreate_unit(UNIT)
    journal.record(attempt(phase))


def states(outcome):
    return [(row.container_name, row.state) for row in outcome.rows]


def test_a_good_image_whose_verify_was_cut_short_is_kept_without_a_restart(runtime):
    journal = MemoryAttemptJournal()
    killed_after_restart(runtime, journal)
    updater, units = next_attempt(runtime, journal)
    outcome = updater.converge(REF, D2)
    assert states(outcome) == [("web", UpdateState.UPDATED)]
    assert "cut short while verifying" in outcome.rows[0].reason
    assert units.restarts == [] and journal.unfinished() == []


def test_a_bad_image_whose_verify_was_cut_short_is_rolled_back_not_unchanged(runtime):
    journal = MemoryAttemptJournal()
    killed_after_restart(runtime, journal)
    units = FakeUnits(runtime)
    units.broken.add(V2)
    units.states[UNIT] = UnitState("activating", "auto-restart", 7)  # crash-looping since
    updater, units = next_attempt(runtime, journal, units)
    outcome = updater.converge(REF, D2)
    assert states(outcome) == [("web", UpdateState.ROLLED_BACK)]
    assert runtime.tags[REF] == V1 and runtime.containers[0].image_id == V1
    assert units.restarts == [UNIT] and units.resets == [UNIT]  # once, back to V1
    assert outcome.lasting and journal.unfinished() == []


def test_an_update_killed_before_its_restart_is_decided_afresh(runtime):
    journal = MemoryAttemptJournal()
    runtime.pull(REF)  # pulled, then killed: the unit still runs V1
    journal.record(attempt("restarting"))
    updater, units = next_attempt(runtime, journal)
    outcome = updater.converge(REF, D2)
    assert states(outcome) == [("web", UpdateState.UPDATED)]
    assert units.restarts == [UNIT] and runtime.containers[0].image_id == V2


def test_a_rollback_cut_short_after_it_restarted_is_reported_rolled_back(runtime):
    journal = MemoryAttemptJournal()
    journal.record(attempt("rolling_back"))  # the unit runs V1 again: the rollback happened
    updater, units = next_attempt(runtime, journal)
    outcome = updater.converge(REF, D2)
    assert states(outcome) == [("web", UpdateState.ROLLED_BACK)]
    assert "the rollback holds" in outcome.rows[0].reason
    assert units.restarts == [] and journal.unfinished() == []


def test_the_attempt_of_another_reference_is_left_to_its_own_jobs(runtime):
    journal = MemoryAttemptJournal()
    killed_after_restart(runtime, journal)
    updater, units = next_attempt(runtime, journal)
    outcome = updater.converge("registry.example.com/other:1", D2)
    assert outcome.rows == [] and len(journal.unfinished()) == 1


class SilentAfterRestart(FakeRuntime):
    """A Podman whose API stops answering once a unit was restarted, until ``answer()``."""

    def __init__(self):
        super().__init__()
        self.silent = False

    def list_autoupdate_containers(self):
        if self.silent:
            raise ContainerRuntimeError("listing containers: connection refused")
        return super().list_autoupdate_containers()

    def recreate_unit(self, unit):
        super().recreate_unit(unit)
        self.silent = True


def test_a_podman_silent_after_a_restart_is_not_a_rollback_and_the_next_attempt_verifies():
    runtime = SilentAfterRestart()
    runtime.add_image(V1)
    runtime.registry[REF] = runtime.add_image(V2, f"registry.example.com/app@{D2}")
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT=UNIT)
    journal = MemoryAttemptJournal()
    units = FakeUnits(runtime)
    first = Updater(
        runtime,
        units,
        FakeLocks(),
        UpdateOptions(settle_seconds=0, restart_timeout=1),
        journal=journal,
        job_id="first",
    )
    outcome = first.converge(REF, D2)
    [row] = outcome.rows
    assert row.state is UpdateState.FAILED and row.retryable
    assert "Podman did not answer" in row.reason
    assert units.restarts == [UNIT] and runtime.tags[REF] == V2  # no rollback
    assert [a.phase for a in journal.unfinished()] == ["verifying"]

    runtime.silent = False  # Podman answers again: the retry verifies and keeps V2
    second, _ = next_attempt(runtime, journal, units)
    outcome = second.converge(REF, D2)
    assert states(outcome) == [("web", UpdateState.UPDATED)]
    assert units.restarts == [UNIT] and journal.unfinished() == []


class BusDropsDuringRestart(FakeUnits):
    """A D-Bus connection that closes while the restart is asked: did systemd get it?"""

    def restart(self, unit, timeout):
        super().restart(unit, timeout)  # it did, this time
        raise SystemdUnreachableError(f"restarting {unit!r}: The connection is closed")


def test_a_bus_that_drops_during_a_restart_is_not_a_rollback_and_the_next_attempt_looks(runtime):
    journal = MemoryAttemptJournal()
    first, units = next_attempt(runtime, journal, BusDropsDuringRestart(runtime))
    [row] = first.converge(REF, D2).rows
    assert row.state is UpdateState.FAILED and row.retryable
    assert runtime.tags[REF] == V2 and units.restarts == [UNIT]  # nothing rolled back
    assert [a.phase for a in journal.unfinished()] == ["restarting"]
    second, _ = next_attempt(runtime, journal)
    assert states(second.converge(REF, D2)) == [("web", UpdateState.UPDATED)]
    assert journal.unfinished() == []


class RecordingGate:
    """A gate that lets every update run and keeps what each reference's end was told."""

    def __init__(self) -> None:
        self.settled_rows: list[list] = []

    def digest_for(self, reference, members):
        return None

    def hold(self, reference, digest, behind):
        return None

    def settled(self, reference, digest, rows):
        self.settled_rows.append(list(rows))


def test_a_rollout_hears_of_an_update_cut_short_and_rolled_back(runtime):
    from workers.gates import _host_state
    from workers.rollout_state import HostState

    journal = MemoryAttemptJournal()
    killed_after_restart(runtime, journal)
    units = FakeUnits(runtime)
    units.broken.add(V2)
    units.states[UNIT] = UnitState("activating", "auto-restart", 7)
    updater, units = next_attempt(runtime, journal, units)
    gate = RecordingGate()
    updater.gate = gate
    outcome = updater.converge(REF, D2)
    assert outcome.lasting
    [told] = gate.settled_rows
    assert [r.state for r in told] == [r.state for r in outcome.rows]
    assert _host_state(told)[0] is HostState.FAILED
