"""Self-update: restarts of units that hold the worker (or its Redis) are handed off, and a
finished handoff's rows are read from what the containers run."""

from pathlib import Path

import pytest

from tests.unit.fakes import FakeLocks, FakeRuntime, FakeUnits
from workers.handoff import (
    Handoff,
    WorkerIdentity,
    handoff_environment,
    handoff_rows,
    worker_identity,
)
from workers.podman_runtime import Container
from workers.report import PODMAN_UPDATED, UpdateState
from workers.settings import Settings
from workers.systemd_units import UnitError
from workers.update import UpdateOptions, Updater

REF = "registry.example.com/podhook:1"
V1, V2 = "1" * 64, "2" * 64
D2 = "sha256:" + "b" * 64


class RecordingHandoff:
    """A handoff that holds the containers of ``units`` and records what it was given."""

    def __init__(self, *units: str, error: str | None = None) -> None:
        self.units = set(units)
        self.error = error
        self.given: list[list[tuple[str, str]]] = []

    def holds(self, container: Container) -> bool:
        return container.unit in self.units

    def hand_off(self, changed, rollback: bool) -> str:
        if self.error:
            raise UnitError(self.error)
        self.given.append([(c.name, image.id) for c, image in changed])
        return "podhook-handoff-job1.service"


@pytest.fixture
def runtime():
    runtime = FakeRuntime()
    runtime.add_image(V1)
    runtime.registry[REF] = runtime.add_image(V2, f"registry.example.com/podhook@{D2}")
    runtime.run("worker", REF, V1, PODMAN_SYSTEMD_UNIT="worker.service")
    runtime.run("webhook", REF, V1, PODMAN_SYSTEMD_UNIT="webhook.service")
    return runtime


def updater_with(runtime, handoff):
    units, locks = FakeUnits(runtime), FakeLocks()
    options = UpdateOptions(settle_seconds=0)
    return Updater(runtime, units, locks, options, handoff), units, locks


def test_a_reference_whose_unit_holds_the_worker_is_handed_off_whole(runtime):
    handoff = RecordingHandoff("worker.service")
    updater, units, locks = updater_with(runtime, handoff)
    outcome = updater.converge(REF, D2)
    assert units.restarts == []  # nothing restarted from inside the worker
    assert handoff.given == [[("worker", V2), ("webhook", V2)]]  # both units, together
    assert {row.container_name: row.state for row in outcome.rows} == {
        "worker": UpdateState.HANDED_OFF,
        "webhook": UpdateState.HANDED_OFF,
    }
    assert "podhook-handoff-job1.service" in outcome.rows[0].reason
    assert sorted(locks.kept) == ["webhook.service", "worker.service"]  # locked while it works
    assert not outcome.retryable and not outcome.lasting
    assert PODMAN_UPDATED[UpdateState.HANDED_OFF] == "pending"


def test_a_handoff_systemd_refuses_changes_nothing_and_is_retried(runtime):
    handoff = RecordingHandoff("worker.service", error="starting transient unit: access denied")
    updater, units, locks = updater_with(runtime, handoff)
    outcome = updater.converge(REF, D2)
    assert units.restarts == [] and locks.kept == {}
    assert [row.state for row in outcome.rows] == [UpdateState.FAILED, UpdateState.FAILED]
    assert all(row.retryable for row in outcome.rows)
    assert "access denied" in outcome.rows[0].reason


def test_units_that_do_not_hold_the_worker_restart_as_usual(runtime):
    handoff = RecordingHandoff("other.service")
    updater, units, _ = updater_with(runtime, handoff)
    outcome = updater.converge(REF, D2)
    assert sorted(units.restarts) == ["webhook.service", "worker.service"]
    assert handoff.given == []
    assert {row.state for row in outcome.rows} == {UpdateState.UPDATED}


def test_the_worker_finds_its_unit_its_container_and_its_redis_container(tmp_path: Path):
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/podhook-worker@a.service\n")
    containerenv = tmp_path / "containerenv"
    containerenv.write_text('engine="podman-4.3.1"\nname="podhook-worker"\nid="' + "c" * 64 + '"\n')
    settings = Settings(redis_url="redis://podhook-redis:6379/0", self_units="extra.service")
    identity = worker_identity(settings, cgroup, containerenv, tmp_path / "missing")
    assert identity == WorkerIdentity(
        frozenset({"podhook-worker@a.service", "extra.service"}),
        frozenset({"c" * 64}),
        frozenset({"podhook-redis"}),
    )

    def container(**kwargs):
        values = {"id": "f" * 64, "name": "app", "unit": "app.service", **kwargs}
        labels = {"PODMAN_SYSTEMD_UNIT": values["unit"]}
        return Container(values["id"], values["name"], REF, V1, labels)

    assert identity.holds(container(id="c" * 64))
    assert identity.holds(container(name="podhook-redis"))
    assert identity.holds(container(unit="extra.service"))
    assert not identity.holds(container())


def test_an_unprivileged_container_is_found_from_the_files_podman_mounts_in_it(tmp_path: Path):
    (tmp_path / "containerenv").write_text('engine="podman-4.3.1"\n')  # no id: unprivileged
    (tmp_path / "mountinfo").write_text(
        "812 790 0:45 /overlay-containers/" + "d" * 64 + "/userdata/hostname /etc/hostname "
        "rw,nosuid,nodev - tmpfs tmpfs rw\n"
    )
    identity = worker_identity(
        Settings(), tmp_path / "x", tmp_path / "containerenv", tmp_path / "mountinfo"
    )
    assert identity.container_ids == frozenset({"d" * 64})


def test_a_host_process_is_not_in_the_containers_whose_files_its_mount_table_shows(
    tmp_path: Path,
):
    (tmp_path / "mountinfo").write_text(
        "900 27 0:51 / /var/lib/containers/storage/overlay-containers/"
        + "e" * 64
        + "/userdata/shm rw - tmpfs shm rw\n"
    )
    for containerenv in (tmp_path / "missing", tmp_path / "mountinfo"):
        identity = worker_identity(Settings(), tmp_path / "x", containerenv, tmp_path / "mountinfo")
        assert identity.container_ids == frozenset()


def test_a_worker_outside_containers_and_units_holds_nothing(tmp_path: Path):
    (tmp_path / "cgroup").write_text("1:name=systemd:/user.slice/user-0.slice/session-1.scope\n")
    settings = Settings(redis_url="redis://127.0.0.1:6379/0")
    identity = worker_identity(
        settings, tmp_path / "cgroup", tmp_path / "missing", tmp_path / "missing"
    )
    assert identity == WorkerIdentity()


def record(rollback=True):
    return Handoff(
        job="job1",
        host="h1",
        transient_unit="podhook-handoff-job1.service",
        units=["worker.service"],
        containers=[
            {
                "name": "worker",
                "id": "c" * 64,
                "unit": "worker.service",
                "image": REF,
                "policy": "registry",
                "old": V1,
                "new": V2,
            }
        ],
        rollback=rollback,
    )


@pytest.mark.parametrize(
    ("running", "failed", "rollback", "state"),
    [
        ({"worker": V2}, False, True, UpdateState.UPDATED),
        ({"worker": V1}, True, True, UpdateState.ROLLED_BACK),
        ({"worker": V2}, True, False, UpdateState.FAILED),  # crash-looping, rollback off
        ({}, True, True, UpdateState.FAILED),  # the rollback did not bring it back
    ],
)
def test_a_finished_handoff_reads_its_rows_from_what_runs(running, failed, rollback, state):
    handoff = record(rollback)
    [row] = handoff_rows(Handoff.from_json(handoff.to_json()), running, failed)
    assert row.state is state
    assert (row.old_image, row.new_image, row.unit) == (V1, V2, "worker.service")
    if state is not UpdateState.UPDATED:
        assert "podhook-handoff-job1.service" in row.reason


def test_the_transient_unit_is_told_units_images_and_tags_to_restore():
    env = handoff_environment(
        record(), Settings(systemd_bus="user", settle_seconds=2.5), "unix:///run/p.sock"
    )
    assert env["PODHOOK_HANDOFF_UNITS"] == "worker.service"
    assert env["PODHOOK_HANDOFF_SCOPE"] == "--user"
    assert env["PODHOOK_HANDOFF_EXPECT"] == f"worker={V2}"
    assert env["PODHOOK_HANDOFF_PREVIOUS"] == f"{V1}={REF}"
    assert env["PODHOOK_HANDOFF_SETTLE"] == "2.5"
    assert env["PODHOOK_HANDOFF_ROLLBACK"] == "1"
