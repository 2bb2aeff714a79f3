"""The update decisions: which containers a push concerns, and what happens to each."""

import pytest

from tests.unit.fakes import FakeLocks, FakeRuntime, FakeUnits
from workers.events import make_event
from workers.locks import LockTimeoutError
from workers.podman_runtime import PolicyRefusedError, _refused_by_policy
from workers.report import UpdateState
from workers.systemd_units import UnitState
from workers.update import UpdateOptions, Updater

REF = "registry.example.com/app:1.2"
V1, V2, V3 = "1" * 64, "2" * 64, "3" * 64
D1, D2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.fixture
def runtime():
    runtime = FakeRuntime()
    runtime.add_image(V1, f"registry.example.com/app@{D1}")
    runtime.registry[REF] = runtime.add_image(V2, f"registry.example.com/app@{D2}")
    return runtime


def make_updater(runtime, units=None, **options):
    units = units or FakeUnits(runtime)
    options.setdefault("settle_seconds", 0)
    return Updater(runtime, units, FakeLocks(), UpdateOptions(**options)), units


def push(digest=D2, reference=REF):
    registry, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    return make_event(registry, repository, tag, digest)


def states(outcome):
    return {row.container_name: row.state for row in outcome.rows}


def test_new_digest_pulls_the_containers_own_reference_and_restarts_once(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    updater, units = make_updater(runtime)
    outcome = updater.apply(push())
    assert states(outcome) == {"web": UpdateState.UPDATED}
    assert runtime.pulls == [REF]
    assert units.restarts == ["web.service"]
    assert runtime.containers[0].image_id == V2
    row = outcome.rows[0]
    assert (row.old_image, row.new_image, row.unit) == (V1, V2, "web.service")
    assert set(row.timings) >= {"pulled", "active", "finished"}


def test_digest_already_running_is_unchanged_without_a_pull(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    updater, units = make_updater(runtime)
    outcome = updater.apply(push(digest=D1))
    assert states(outcome) == {"web": UpdateState.UNCHANGED}
    assert runtime.pulls == [] and units.restarts == []


def test_pull_that_brings_the_same_image_restarts_nothing(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.registry[REF] = runtime.images[V1]
    updater, units = make_updater(runtime)
    outcome = updater.apply(push(digest=None))
    assert states(outcome) == {"web": UpdateState.UNCHANGED}
    assert runtime.pulls == [REF] and units.restarts == []


def test_other_tags_registries_and_repositories_are_not_concerned(runtime):
    runtime.run("other-tag", "registry.example.com/app:1.3", V1, PODMAN_SYSTEMD_UNIT="a.service")
    runtime.run("other-host", "mirror.example.com/app:1.2", V1, PODMAN_SYSTEMD_UNIT="b.service")
    runtime.run("other-repo", "registry.example.com/api:1.2", V1, PODMAN_SYSTEMD_UNIT="c.service")
    updater, units = make_updater(runtime)
    outcome = updater.apply(push())
    assert outcome.rows == [] and units.restarts == [] and runtime.pulls == []


def test_containers_that_cannot_be_updated_fail_loudly_or_are_skipped(runtime):
    runtime.run("no-unit", REF, V1)
    runtime.run(
        "local", REF, V1, PODMAN_SYSTEMD_UNIT="l.service", **{"io.containers.autoupdate": "local"}
    )
    runtime.run("short", "app:1.2", V1, PODMAN_SYSTEMD_UNIT="s.service")
    updater, units = make_updater(runtime)
    outcome = updater.apply(push())
    reasons = {row.container_name: (row.state, row.reason) for row in outcome.rows}
    # Podman's words: a labeled container without its unit is a configuration error.
    assert reasons["no-unit"] == (
        UpdateState.FAILED,
        'auto-updating container "id-no-unit": no PODMAN_SYSTEMD_UNIT label found',
    )
    assert reasons["local"][0] is UpdateState.SKIPPED and "'local'" in reasons["local"][1]
    # A short name names no registry: a push of a registry cannot concern it (Podman refuses
    # to create such a container with the registry policy).
    assert "short" not in reasons
    assert units.restarts == [] and runtime.pulls == []


def test_image_policy_alias_is_honoured(runtime):
    runtime.run(
        "web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service", **{"io.containers.autoupdate": "image"}
    )
    updater, units = make_updater(runtime)
    assert states(updater.apply(push())) == {"web": UpdateState.UPDATED}


def test_two_containers_of_one_unit_restart_it_once(runtime):
    runtime.run("pod-a", REF, V1, PODMAN_SYSTEMD_UNIT="pod-app.service")
    runtime.run("pod-b", REF, V1, PODMAN_SYSTEMD_UNIT="pod-app.service")
    updater, units = make_updater(runtime)
    outcome = updater.apply(push())
    assert states(outcome) == {"pod-a": UpdateState.UPDATED, "pod-b": UpdateState.UPDATED}
    assert units.restarts == ["pod-app.service"]
    assert runtime.pulls == [REF]
    assert updater.locks.held == ["pod-app.service"]


def test_failing_new_image_is_rolled_back(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.registry[REF] = runtime.add_image(V3)
    updater, units = make_updater(runtime)
    units.broken.add(V3)
    outcome = updater.apply(push(digest=None))
    row = outcome.rows[0]
    assert row.state is UpdateState.ROLLED_BACK
    assert "unit is failed" in row.reason and "rolled back" in row.reason
    assert units.restarts == ["web.service", "web.service"]
    assert runtime.tags[REF] == V1 and runtime.containers[0].image_id == V1
    assert (row.old_image, row.new_image) == (V1, V3)
    assert outcome.retryable == []


def test_rollback_that_fails_too_is_failed(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.registry[REF] = runtime.add_image(V3)
    updater, units = make_updater(runtime)
    units.broken.update({V1, V3})
    row = updater.apply(push(digest=None)).rows[0]
    assert row.state is UpdateState.FAILED
    assert "rollback failed" in row.reason


def test_without_rollback_a_failing_image_is_failed_and_left(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.registry[REF] = runtime.add_image(V3)
    updater, units = make_updater(runtime, rollback=False)
    units.broken.add(V3)
    row = updater.apply(push(digest=None)).rows[0]
    assert row.state is UpdateState.FAILED and "rollback is off" in row.reason
    assert units.restarts == ["web.service"]


def test_unit_that_does_not_recreate_its_container_is_not_called_updated(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    updater, _units = make_updater(runtime, units=FakeUnits(runtime, recreates=False))
    row = updater.apply(push()).rows[0]
    assert row.state is not UpdateState.UPDATED
    assert "--new" in row.reason


def test_dry_run_reports_pending_and_changes_nothing(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    updater, units = make_updater(runtime, dry_run=True)
    outcome = updater.apply(push())
    assert states(outcome) == {"web": UpdateState.PENDING}
    assert runtime.pulls == [] and units.restarts == []
    assert runtime.containers[0].image_id == V1


def test_failed_pull_is_failed_and_transient(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.pull_error = "connection refused"
    updater, units = make_updater(runtime)
    outcome = updater.apply(push())
    assert states(outcome) == {"web": UpdateState.FAILED}
    assert outcome.retryable and "connection refused" in outcome.retryable[0].reason
    assert units.restarts == []


def test_decides_on_containers_as_they_are_once_the_unit_lock_is_held(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    updater, units = make_updater(runtime)

    class UpdatedWhileWaiting(FakeLocks):
        def hold(self, unit):
            # Another worker updated the unit while this one waited for the lock.
            runtime.tags[REF] = V2
            runtime.recreate_unit(unit)
            return super().hold(unit)

    updater.locks = UpdatedWhileWaiting()
    outcome = updater.apply(push())
    assert states(outcome) == {"web": UpdateState.UNCHANGED}
    assert units.restarts == []  # pulled before the lock (cheap to repeat), never restarted


def test_containers_pinned_by_digest_are_not_concerned(runtime):
    runtime.run("pinned", f"{REF}@{D1}", V1, PODMAN_SYSTEMD_UNIT="pinned.service")
    updater, units = make_updater(runtime)
    assert updater.apply(push()).rows == []
    assert runtime.pulls == [] and units.restarts == []


def test_a_unit_that_cannot_be_handled_fails_alone_and_the_others_go_on(runtime):
    runtime.run("broken", REF, V1, PODMAN_SYSTEMD_UNIT="a.service")
    runtime.run("fine", REF, V1, PODMAN_SYSTEMD_UNIT="b.service")
    updater, units = make_updater(runtime)

    class UnitALocked(FakeLocks):
        def hold(self, unit):
            if unit == "a.service":
                raise LockTimeoutError("unit 'a.service' stayed locked by another worker")
            return super().hold(unit)

    updater.locks = UnitALocked()
    outcome = updater.apply(push())
    assert states(outcome) == {"broken": UpdateState.FAILED, "fine": UpdateState.UPDATED}
    assert [row.reason for row in outcome.retryable] == [
        "unit 'a.service' stayed locked by another worker"
    ]
    assert units.restarts == ["b.service"]


def test_a_pull_that_does_not_yield_the_pushed_digest_is_retryable_not_unchanged(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.registry[REF] = runtime.images[V1]  # a mirror still serving the old image
    updater, units = make_updater(runtime)
    outcome = updater.apply(push(digest=D2))
    [row] = outcome.rows
    assert row.state is UpdateState.FAILED and row.retryable
    assert "not the pushed" in row.reason and D2 in row.reason
    assert units.restarts == []


def test_one_failing_unit_rolls_back_every_unit_of_the_reference(runtime):
    runtime.run("a", REF, V1, PODMAN_SYSTEMD_UNIT="a.service")
    runtime.run("b", REF, V1, PODMAN_SYSTEMD_UNIT="b.service", BROKEN="1")
    units = FakeUnits(runtime)

    def restart(unit, timeout, original=units.restart):
        result = original(unit, timeout)
        if unit == "b.service" and runtime.tags[REF] == V2:
            units.states[unit] = UnitState("failed", "failed", 0)
        return result

    units.restart = restart
    updater, _ = make_updater(runtime, units)
    outcome = updater.apply(push())
    assert states(outcome) == {"a": UpdateState.ROLLED_BACK, "b": UpdateState.ROLLED_BACK}
    assert runtime.tags[REF] == V1
    assert {c.name: c.image_id for c in runtime.containers} == {"a": V1, "b": V1}
    assert units.restarts == ["a.service", "b.service", "a.service", "b.service"]
    reasons = {row.container_name: row.reason for row in outcome.rows}
    assert "b.service failed" in reasons["a"] and "rolled back" in reasons["a"]


def test_bad_configuration_is_a_failed_row_in_podmans_words(runtime):
    runtime.run(
        "fake", REF, V1, PODMAN_SYSTEMD_UNIT="f.service", **{"io.containers.autoupdate": "fake"}
    )
    updater, units = make_updater(runtime)
    [row] = updater.apply(push()).rows
    assert row.state is UpdateState.FAILED and not row.retryable
    assert row.reason == (
        'invalid auto-update policy "fake": valid policies are '
        '["disabled" "image" "local" "registry"]'
    )


def test_reconcile_checks_each_reference_once_and_updates_what_is_behind(runtime):
    other = "registry.example.com/other:1"
    runtime.add_image(V3, f"registry.example.com/other@{D1}")
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.run("web2", REF, V1, PODMAN_SYSTEMD_UNIT="web2.service")
    runtime.run("current", other, V3, PODMAN_SYSTEMD_UNIT="other.service")
    lookups = []

    def lookup(reference, authfile):
        lookups.append(reference)
        return {REF: D2, other: D1}[reference]

    updater, units = make_updater(runtime)
    outcome = updater.reconcile(lookup)
    assert states(outcome) == {
        "web": UpdateState.UPDATED,
        "web2": UpdateState.UPDATED,
        "current": UpdateState.UNCHANGED,
    }
    assert sorted(lookups) == sorted([other, REF])  # one check per distinct reference
    assert sorted(units.restarts) == ["web.service", "web2.service"]
    assert runtime.pulls == [REF]


def test_reconcile_dry_run_is_pending_and_changes_nothing(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    updater, units = make_updater(runtime, dry_run=True)
    outcome = updater.reconcile(lambda reference, authfile: D2)
    assert states(outcome) == {"web": UpdateState.PENDING}
    assert runtime.pulls == [] and units.restarts == []


def test_a_rollback_that_cannot_get_the_unit_lock_is_a_failed_row_not_an_exception(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    runtime.registry[REF] = runtime.add_image(V3)
    updater, units = make_updater(runtime)
    units.broken.add(V3)

    class LockedForTheRollback(FakeLocks):
        def hold(self, unit):
            if self.held:
                raise LockTimeoutError(f"unit {unit!r} stayed locked by another worker")
            return super().hold(unit)

    updater.locks = LockedForTheRollback()
    [row] = updater.apply(push(digest=None)).rows
    assert row.state is UpdateState.FAILED and not row.retryable
    assert "rollback failed: unit 'web.service' stayed locked" in row.reason
    assert units.restarts == ["web.service"]


def test_a_pull_the_signature_policy_refuses_fails_and_is_not_retried(runtime):
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")

    def refuse(reference, authfile=None):
        raise PolicyRefusedError(
            f"pulling {reference}: Source image rejected: A signature was required, but no "
            "signature exists"
        )

    runtime.pull = refuse
    updater, units = make_updater(runtime)
    outcome = updater.apply(push())
    [row] = outcome.rows
    assert row.state is UpdateState.FAILED and not row.retryable
    assert "Source image rejected" in row.reason
    assert outcome.lasting == [row] and units.restarts == []


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        ("Source image rejected: A signature was required, but no signature exists", True),
        ("Source image rejected: Invalid GPG signature: ...", True),
        (
            'Source image rejected: Get "http://s.example/x": dial tcp: connection refused',
            False,
        ),
        ("Source image rejected: reading signature from http://s.example/x: status 503", False),
        ("initializing source docker://r.example/app:1: connection refused", False),
    ],
)
def test_only_the_signature_policys_verdict_is_a_refusal(message, refused):
    assert _refused_by_policy(message) is refused
