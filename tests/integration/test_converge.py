"""Convergence on the real stack: pushes nobody was told about still reach the containers,
through `podhook reconcile` on the host and through the reconcile a worker runs at start."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from podhook_support import PODHOOK, reconcile_here
from redis import Redis

from workers.hosts import forget_host, get_hosts

pytestmark = pytest.mark.integration

HOST_ID = "converge-host"


def reconcile(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`podhook reconcile` on this host: the stack's Podman socket and bus, no Redis."""
    return reconcile_here(stack, HOST_ID, *args)


def test_reconcile_finds_a_push_nobody_was_told_about_and_applies_it(stack, units):
    stack.registry.configure(None)  # the registry sends no notifications: a missed webhook
    v1 = stack.build_and_push("converge/web", "1", marker="web-v1")
    current = stack.build_and_push("converge/db", "1", marker="db-v1")
    web = units.container("cweb", v1.ref)
    units.container("cdb", current.ref)
    v2 = stack.build_and_push("converge/web", "1", marker="web-v2")

    dry = reconcile(stack, "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    rows = {row["ContainerName"]: row for row in json.loads(dry.stdout)}
    assert {name: row["Updated"] for name, row in rows.items() if name in ("cweb", "cdb")} == {
        "cweb": "pending",
        "cdb": "false",
    }
    assert set(rows["cweb"]) == {
        "Unit",
        "Container",
        "ContainerName",
        "ContainerID",
        "Image",
        "Policy",
        "Updated",
    }
    assert rows["cweb"]["Container"] == f"{rows['cweb']['ContainerID'][:12]} (cweb)"
    assert (rows["cweb"]["Unit"], rows["cweb"]["Image"], rows["cweb"]["Policy"]) == (
        web,
        v1.ref,
        "registry",
    )
    assert stack.container_info("cweb")["image_digest"] == v1.digest  # dry run changed nothing

    applied = reconcile(stack, "--format", "{{.ContainerName}},{{.Updated}}")
    assert applied.returncode == 0, applied.stderr
    assert "cweb,true" in applied.stdout.splitlines()
    assert "cdb,false" in applied.stdout.splitlines()
    stack.wait_unit(web, "active", 30)
    assert stack.container_info("cweb")["image_digest"] == v2.digest
    assert stack.podman("exec", "cweb", "cat", "/version").strip() == "web-v2"

    again = reconcile(stack)
    assert again.returncode == 0, again.stderr
    header, *lines = again.stdout.splitlines()
    assert header.split() == ["UNIT", "CONTAINER", "IMAGE", "POLICY", "UPDATED"]
    assert any(line.split()[-1] == "false" and "(cweb)" in line for line in lines)


def test_a_misconfigured_container_makes_reconcile_exit_125_with_the_reason(stack, units):
    stack.registry.configure(None)
    v1 = stack.build_and_push("converge/odd", "1", marker="odd-v1")
    units.container("codd", v1.ref, autoupdate="Registry")
    result = reconcile(stack, "--format", "json")
    assert result.returncode == 125
    rows = {row["ContainerName"]: row for row in json.loads(result.stdout)}
    assert rows["codd"]["Updated"] == "failed"
    assert 'invalid auto-update policy "Registry"' in result.stderr


def test_a_worker_that_was_down_during_a_push_converges_when_it_starts(stack, units):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    v1 = stack.build_and_push("converge/late", "1", marker="late-v1")
    unit = units.container("clate", v1.ref)
    v2 = stack.build_and_push("converge/late", "1", marker="late-v2")  # while no worker runs

    env = {"PODHOOK_HOST_ID": HOST_ID, "PODHOOK_SETTLE_SECONDS": "1", "PODHOOK_JOB_RETRIES": "0"}
    started = time.monotonic()
    worker = stack.start_process(
        [PODHOOK, "worker"],
        env=env,
        name="converge-worker",
        ready=lambda: HOST_ID in get_hosts(redis),
    )
    try:
        from harness import HarnessError, wait_for

        try:  # the container is recreated by its unit's restart: gone for a moment
            wait_for(
                lambda: stack.container_info("clate")["image_digest"] == v2.digest,
                90,
                "clate on the pushed image",
                interval=0.2,
            )
        except HarnessError:
            pytest.fail(f"the worker did not converge clate:\n{worker.log_text()}")
        print(
            f"\nreturn to convergence: {time.monotonic() - started:.2f}s after the worker started"
        )
        stack.wait_unit(unit, "active", 30)
    finally:
        worker.stop()
        forget_host(redis, HOST_ID)
