"""A restart counts only when the new container is healthy: containers with a health check
must report healthy (their check run as `podman healthcheck run` does); those without one keep
the settle window."""

import pytest

from tests.unit.fakes import FakeLocks, FakeRuntime, FakeUnits
from workers.report import UpdateState
from workers.update import UpdateOptions, Updater

REF = "registry.example.com/app:1"
V1, V2 = "1" * 64, "2" * 64
D2 = "sha256:" + "b" * 64


@pytest.fixture
def runtime():
    runtime = FakeRuntime()
    runtime.add_image(V1)
    runtime.registry[REF] = runtime.add_image(V2, f"registry.example.com/app@{D2}")
    runtime.run("web", REF, V1, PODMAN_SYSTEMD_UNIT="web.service")
    return runtime


def converge(runtime, **options):
    units = FakeUnits(runtime)
    options = UpdateOptions(settle_seconds=0, **options)
    outcome = Updater(runtime, units, FakeLocks(), options).converge(REF, D2)
    return outcome, units


def test_a_new_container_that_becomes_healthy_is_updated(runtime, monkeypatch):
    monkeypatch.setattr("workers.update._HEALTH_POLL", 0)
    runtime.health[V2] = ["starting", "starting", "healthy"]
    outcome, units = converge(runtime)
    assert [row.state for row in outcome.rows] == [UpdateState.UPDATED]
    assert runtime.health[V2] == ["healthy"]  # its check ran until it said so
    assert units.restarts == ["web.service"]


def test_an_unhealthy_new_container_is_rolled_back_and_the_row_names_its_check(runtime):
    runtime.health[V2] = ["unhealthy"]
    outcome, units = converge(runtime)
    [row] = outcome.rows
    assert row.state is UpdateState.ROLLED_BACK
    assert "is unhealthy: its health check `cat /healthy` failed: no /healthy" in row.reason
    assert runtime.tags[REF] == V1 and runtime.containers[0].image_id == V1
    assert units.restarts == ["web.service", "web.service"]


def test_a_check_that_stays_starting_fails_at_the_restart_timeout(runtime, monkeypatch):
    monkeypatch.setattr("workers.update._HEALTH_POLL", 0.01)
    runtime.health[V2] = ["starting"]
    outcome, _ = converge(runtime, restart_timeout=0.05)
    [row] = outcome.rows
    assert row.state is UpdateState.ROLLED_BACK
    assert "did not become healthy within 0.05s (health check `cat /healthy`)" in row.reason


def test_the_old_image_is_not_held_to_a_check_it_fails_too(runtime):
    # Rolling back to an image whose own check fails would loop: the rollback verifies the
    # old image's health like any restart, and says so when it fails.
    runtime.health[V2] = ["unhealthy"]
    runtime.health[V1] = ["unhealthy"]
    [row] = converge(runtime)[0].rows
    assert row.state is UpdateState.FAILED
    assert "rollback failed" in row.reason


def test_a_pull_that_gives_another_digest_leaves_the_tag_where_it_was(runtime):
    # The gate allowed D2; meanwhile the tag was pushed again (D3, which its rollout may hold).
    runtime.registry[REF] = runtime.add_image(
        "3" * 64, f"registry.example.com/app@sha256:{'c' * 64}"
    )
    outcome, units = converge(runtime)
    [row] = outcome.rows
    assert row.state is UpdateState.FAILED and row.retryable
    assert runtime.tags[REF] == V1  # the next restart of the unit still runs what it ran
    assert units.restarts == []
