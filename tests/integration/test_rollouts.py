"""A rollout across three hosts on the real stack: three Podman hosts of their own (storage,
API service, units), three workers, waves canary -> rest with a soak between them.

A good image reaches the canary, then the rest once the soak is over; a bad one (its health
check fails) is rolled back on the canary, the rollout halts, and the other two never change.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import HarnessError, wait_for
from podhook_support import PODHOOK, rows_for, start_worker
from redis import Redis

from workers.events import make_event
from workers.hosts import forget_host
from workers.rollouts import get_rollout
from workers.routing import dispatch_push

pytestmark = pytest.mark.integration

HOSTS = {"roll-a": "ring=canary", "roll-b": "ring=main", "roll-c": ""}
HEALTH_CHECK = ["--health-cmd", "cat /healthy", "--health-retries", "2", "--health-interval", "1s"]
SOAK = 4
POLICY = f"""
[[rollouts]]
match = "*/rollout/*"
soak = {SOAK}
waves = [{{ name = "canary", hosts = "ring=canary" }}, {{ name = "rest", hosts = "*" }}]
"""


@pytest.fixture
def fleet(stack: Any) -> Iterator[dict[str, Any]]:
    """Three Podman hosts of their own, stopped (with their units) after the test."""
    hosts = {name: stack.start_fleet_host(name) for name in HOSTS}
    units: list[tuple[Any, str]] = []
    yield {"hosts": hosts, "units": units}
    for host, unit in units:
        host.remove_unit(unit)
    for host in hosts.values():
        host.stop()


def _push(redis: Redis, image: Any) -> None:
    registry, _, _ = image.ref.partition("/")
    dispatch_push(redis, make_event(registry, image.repository, image.tag, image.digest))


def _show(stack: Any, rollout: str) -> str:
    result = subprocess.run(
        [PODHOOK, "rollouts", "show", rollout],
        env={"PATH": "/usr/bin:/bin", **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_good_image_goes_wave_by_wave_and_a_bad_one_halts_on_the_canary(
    stack, spawn, fleet, tmp_path: Path
):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    config = tmp_path / "podhook.toml"
    config.write_text(POLICY)
    healthy = {"healthy": "yes"}
    v1 = stack.build_and_push("rollout/web", "1", marker="roll-v1", extra_files=healthy)
    hosts = fleet["hosts"]
    for name, host in hosts.items():
        unit = host.create_unit_container(f"web-{name}", v1.ref, extra_args=HEALTH_CHECK)
        fleet["units"].append((host, unit))
    workers = {
        name: start_worker(
            spawn,
            redis,
            name,
            podman_url=host.service.url,
            host_labels=HOSTS[name],
            config=str(config),
            settle_seconds="1",
            restart_timeout="30",
            reconcile_interval="0",
            job_retries="0",
        )
        for name, host in hosts.items()
    }

    v1_id = hosts["roll-a"].image_id(v1.ref)

    def runs(name: str, image_id: str) -> bool:
        return hosts[name].container_image(f"web-{name}") == image_id

    def logs() -> str:
        return "\n".join(f"--- {n}\n{w.log_text()}" for n, w in workers.items())

    try:
        v2 = stack.build_and_push("rollout/web", "1", marker="roll-v2", extra_files=healthy)
        _push(redis, v2)
        try:
            wait_for(lambda: not runs("roll-a", v1_id), 90, "the canary on v2", interval=0.5)
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'web-roll-a')}\n{logs()}")
        v2_id = hosts["roll-a"].image_id(v2.ref)
        assert runs("roll-a", v2_id)
        rollout = get_rollout(redis, v2.ref)
        assert rollout is not None and rollout.digest == v2.digest
        assert [sorted(w.hosts) for w in rollout.waves] == [["roll-a"], ["roll-b", "roll-c"]]
        # The rest wait for the canary's soak, in their rows too.
        wait_for(
            lambda: all(rows_for(redis, f"web-{n}") for n in ("roll-b", "roll-c")),
            60,
            "the rest's waiting rows",
        )
        for name in ("roll-b", "roll-c"):
            row = rows_for(redis, f"web-{name}")[0]
            assert row["state"] == "waiting" and f"rollout {rollout.id}" in row["reason"], row
            assert runs(name, v1_id), f"{name} updated before its wave"
        try:
            wait_for(lambda: runs("roll-b", v2_id) and runs("roll-c", v2_id), 120, "the rest on v2")
            wait_for(lambda: get_rollout(redis, rollout.id).state.value == "done", 30, "done")
        except HarnessError:
            pytest.fail(f"{_show(stack, rollout.id)}\n{logs()}")
        done = get_rollout(redis, rollout.id)
        canary, rest = done.waves
        assert rest.started_at >= canary.updated_at + SOAK
        good = _show(stack, rollout.id)

        v3 = stack.build_and_push("rollout/web", "1", marker="roll-v3")  # no /healthy
        _push(redis, v3)
        try:
            wait_for(
                lambda: (
                    (r := get_rollout(redis, v3.ref)) is not None
                    and r.digest == v3.digest
                    and r.state.value == "halted"
                ),
                120,
                "the rollout of v3 halted",
            )
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'web-roll-a')}\n{logs()}")
        halted = get_rollout(redis, v3.ref)
        assert "health check `cat /healthy`" in halted.reason, halted.reason
        assert halted.reason.startswith("roll-a: web-roll-a: rolled_back")
        # Well past the soak: the rest never moved, and the canary is back on v2.
        wait_for(lambda: runs("roll-a", v2_id), 30, "the canary back on v2")
        time.sleep(SOAK + 4)
        for name in ("roll-b", "roll-c"):
            assert runs(name, v2_id), f"{name} changed"
            assert [r["state"] for r in rows_for(redis, f"web-{name}")][-1] == "waiting"
        bad = _show(stack, halted.id)
        print(f"\n$ podhook rollouts show {done.id}\n{good}\n$ podhook rollouts show {halted.id}")
        print(bad)
    finally:
        for name, worker in workers.items():
            worker.stop()
            forget_host(redis, name)
