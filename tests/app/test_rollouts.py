"""Rollouts on a real Redis: waves by host label, soak, halt on failure, the operator's hand."""

from __future__ import annotations

import pytest

from workers.hosts import register_host
from workers.queueing import work_key
from workers.rollout_policy import parse_policies
from workers.rollouts import (
    ADVANCING_KEY,
    HostState,
    RolloutError,
    RolloutState,
    abort,
    advance_active,
    forget_host_in_rollouts,
    get_rollout,
    list_rollouts,
    pause,
    promote,
    record_host,
    resume,
    start_rollout,
)
from workers.settings import load_settings
from workers.wakeups import pending_wakeups

REF = "registry.example/shop/web:1"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
T0 = 1_900_000_000.0


@pytest.fixture
def fleet(redis):
    for host, labels in {
        "canary-1": {"ring": "canary"},
        "web-1": {"ring": "main"},
        "web-2": {},
    }.items():
        register_host(redis, host, labels=labels)
    [policy] = parse_policies(
        [
            {
                "match": "registry.example/shop/*",
                "soak": 600,
                "waves": [{"name": "canary", "hosts": "ring=canary"}, {"name": "rest"}],
            }
        ]
    )
    settings = load_settings({"PODHOOK_HOST_ID": "canary-1"})
    return settings, policy


def advance_now(redis, settings, at):
    """``advance_active`` at ``at``, past its once-a-second throttle."""
    redis.delete(ADVANCING_KEY)
    return advance_active(redis, settings, at)


def _converging(redis, host):
    return redis.exists(work_key(host, REF)) == 1


def test_a_good_image_reaches_the_canary_then_the_rest_after_the_soak(redis, fleet):
    settings, policy = fleet
    rollout = start_rollout(redis, settings, policy, REF, D1, T0)
    assert [sorted(w.hosts) for w in rollout.waves] == [["canary-1"], ["web-1", "web-2"]]
    assert rollout.may_update("canary-1") and not rollout.may_update("web-1")
    assert _converging(redis, "canary-1") and not _converging(redis, "web-1")
    assert "wave 1 (canary) is updating" in rollout.hold_reason("web-1")
    # Every host that asks gets the same rollout.
    assert start_rollout(redis, settings, policy, REF, D1, T0 + 1).id == rollout.id

    rollout = record_host(redis, settings, rollout, "canary-1", HostState.UPDATED, "", T0 + 5)
    assert rollout.waves[0].state() == "soaking" and rollout.waves[0].soak_until == T0 + 605
    assert "soaking until" in rollout.hold_reason("web-1")
    assert pending_wakeups(redis, "web-1") == {REF: T0 + 605}
    assert advance_now(redis, settings, T0 + 300) == 0
    assert advance_active(redis, settings, T0 + 605) == 0  # one look per second, fleet-wide
    assert advance_now(redis, settings, T0 + 605) == 1
    rollout = get_rollout(redis, rollout.id)
    assert rollout.wave == 1 and rollout.may_update("web-1")
    assert _converging(redis, "web-1") and _converging(redis, "web-2")
    for host in ("web-1", "web-2"):
        rollout = record_host(redis, settings, rollout, host, HostState.UPDATED, "", T0 + 700)
    assert rollout.state is RolloutState.DONE
    assert [s.text for s in rollout.steps][-1] == "done: 3 hosts updated"


def test_a_failure_on_the_canary_halts_and_the_rest_never_update(redis, fleet):
    settings, policy = fleet
    rollout = start_rollout(redis, settings, policy, REF, D1, T0)
    rollout = record_host(
        redis, settings, rollout, "canary-1", HostState.FAILED, "web: rolled_back: unhealthy", T0
    )
    assert rollout.state is RolloutState.HALTED
    assert rollout.reason == "canary-1: web: rolled_back: unhealthy"
    assert advance_now(redis, settings, T0 + 10_000) == 0
    rollout = get_rollout(redis, REF)
    assert not rollout.may_update("web-1") and not rollout.may_update("canary-1")
    assert "the rollout halted: canary-1: web: rolled_back" in rollout.hold_reason("web-1")
    # Resumed, the failed canary tries again.
    rollout = resume(redis, settings, rollout.id, T0 + 20)
    assert rollout.state is RolloutState.ROLLING and rollout.may_update("canary-1")


def test_a_new_push_supersedes_the_rollout_in_flight(redis, fleet):
    settings, policy = fleet
    first = start_rollout(redis, settings, policy, REF, D1, T0)
    second = start_rollout(redis, settings, policy, REF, D2, T0 + 1)
    assert get_rollout(redis, first.id).state is RolloutState.SUPERSEDED
    assert get_rollout(redis, REF).id == second.id
    assert [r.id for r in list_rollouts(redis)] == [second.id, first.id]


def test_a_digest_pushed_again_after_another_rolls_out_again(redis, fleet):
    settings, policy = fleet
    first = start_rollout(redis, settings, policy, REF, D1, T0)
    start_rollout(redis, settings, policy, REF, D2, T0 + 1)
    again = start_rollout(redis, settings, policy, REF, D1, T0 + 2)
    assert again.id != first.id and again.state is RolloutState.ROLLING
    assert get_rollout(redis, REF).id == again.id
    assert start_rollout(redis, settings, policy, REF, D1, T0 + 3).id == again.id


def test_pause_promote_and_abort(redis, fleet):
    settings, policy = fleet
    rollout = start_rollout(redis, settings, policy, REF, D1, T0)
    rollout = record_host(redis, settings, rollout, "canary-1", HostState.UPDATED, "", T0)
    rollout = pause(redis, settings, rollout.id, T0 + 1)
    assert advance_now(redis, settings, T0 + 10_000) == 0
    assert not get_rollout(redis, rollout.id).may_update("web-1")
    with pytest.raises(RolloutError, match="not rolling"):
        promote(redis, settings, rollout.id, T0 + 2)
    resume(redis, settings, rollout.id, T0 + 3)
    rollout = promote(redis, settings, rollout.id, T0 + 4)
    assert rollout.wave == 1 and rollout.may_update("web-2")
    rollout = abort(redis, settings, rollout.id, T0 + 5)
    assert rollout.state is RolloutState.ABORTED and not rollout.may_update("web-2")
    with pytest.raises(RolloutError, match="no rollout"):
        pause(redis, settings, "nope", T0)


def test_a_host_that_joins_late_goes_to_the_last_wave(redis, fleet):
    settings, policy = fleet
    rollout = start_rollout(redis, settings, policy, REF, D1, T0)
    rollout = record_host(redis, settings, rollout, "new-1", HostState.WAITING, "", T0 + 1)
    assert rollout.wave_of("new-1") == 1 and not rollout.may_update("new-1")


def test_a_forgotten_host_no_longer_holds_its_wave(redis, fleet):
    settings, policy = fleet
    rollout = start_rollout(redis, settings, policy, REF, D1, T0)
    assert forget_host_in_rollouts(redis, settings, "canary-1", T0 + 1) == 1
    rollout = get_rollout(redis, rollout.id)
    assert rollout.wave == 1 and rollout.may_update("web-1")  # the empty canary wave went by
    assert any(step.text.startswith("host canary-1 forgotten") for step in rollout.steps)


def test_a_host_of_an_earlier_wave_that_fails_later_halts_the_rollout(redis, fleet):
    settings, policy = fleet
    rollout = start_rollout(redis, settings, policy, REF, D1, T0)
    rollout = record_host(redis, settings, rollout, "canary-1", HostState.UPDATED, "", T0)
    rollout = promote(redis, settings, rollout.id, T0 + 1)
    assert rollout.wave == 1
    rollout = record_host(
        redis, settings, rollout, "canary-1", HostState.FAILED, "web: rolled_back: crash", T0 + 2
    )
    assert rollout.state is RolloutState.HALTED and not rollout.may_update("web-2")


def test_hosts_starting_one_rollout_at_once_start_one(redis, redis_url, fleet):
    import threading

    from redis import Redis

    settings, policy = fleet
    started: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        client = Redis.from_url(redis_url)
        barrier.wait()
        started.append(start_rollout(client, settings, policy, REF, D1, T0).id)
        client.close()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(started)) == 1
    [rollout] = list_rollouts(redis)
    assert rollout.state is RolloutState.ROLLING
