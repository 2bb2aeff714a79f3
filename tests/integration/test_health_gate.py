"""Health-gated updates on the real stack: a container created with a health check counts as
updated only once its check passes on the new image; a new image whose check fails is rolled
back, and the row names the check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from harness import HarnessError, wait_for
from redis import Redis

from workers import audit
from workers.events import make_event
from workers.hosts import forget_host, get_hosts
from workers.routing import dispatch_push

pytestmark = pytest.mark.integration

PODHOOK = str(Path(sys.executable).parent / "podhook")
HOST = "health-host"
HEALTH_CHECK = ["--health-cmd", "cat /healthy", "--health-retries", "2", "--health-interval", "1s"]


def rows_for(redis: Redis, name: str) -> list[dict[str, Any]]:
    """Every report row about container ``name`` in the audit trail, oldest first."""
    reports = [e.data for e in reversed(audit.read(redis, kind="outcome", limit=500))]
    return [
        r for report in reports for r in report.get("containers", []) if r["container_name"] == name
    ]


def push(redis: Redis, image: Any) -> None:
    registry, _, _ = image.ref.partition("/")
    dispatch_push(redis, make_event(registry, image.repository, image.tag, image.digest))


def test_a_healthy_image_is_updated_and_an_unhealthy_one_rolled_back(stack, units, spawn):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    healthy = {"healthy": "yes"}
    v1 = stack.build_and_push("health/web", "1", marker="health-v1", extra_files=healthy)
    unit = units.container("chealth", v1.ref, extra_args=HEALTH_CHECK)
    worker = spawn(
        [PODHOOK, "worker"],
        env={
            "PODHOOK_HOST_ID": HOST,
            "PODHOOK_SETTLE_SECONDS": "1",
            "PODHOOK_RESTART_TIMEOUT": "30",
            "PODHOOK_RECONCILE_INTERVAL": "0",
            "PODHOOK_JOB_RETRIES": "0",
        },
        name="worker-health",
        ready=lambda: HOST in get_hosts(redis),
        timeout=60,
    )
    try:
        v2 = stack.build_and_push("health/web", "1", marker="health-v2", extra_files=healthy)
        push(redis, v2)
        try:
            wait_for(
                lambda: [r["state"] for r in rows_for(redis, "chealth")] == ["updated"],
                90,
                "chealth updated on v2",
                interval=0.5,
            )
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'chealth')}\n{worker.log_text()}")
        v2_image = stack.image_info(v2.ref)["Id"]
        assert stack.container_info("chealth")["image_id"] == v2_image

        v3 = stack.build_and_push("health/web", "1", marker="health-v3")  # no /healthy
        push(redis, v3)
        try:
            wait_for(
                lambda: len(rows_for(redis, "chealth")) == 2,
                120,
                "chealth's second row",
                interval=0.5,
            )
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'chealth')}\n{worker.log_text()}")
        row = rows_for(redis, "chealth")[-1]
        assert row["state"] == "rolled_back", row
        assert "its health check `cat /healthy` failed" in row["reason"]
        stack.wait_unit(unit, "active", 30)
        assert stack.container_info("chealth")["image_id"] == v2_image
        assert stack.image_info(v1.ref)["Id"] == v2_image  # the tag is back on v2
        assert stack.podman("exec", "chealth", "cat", "/version").strip() == "health-v2"
    finally:
        worker.stop()
        forget_host(redis, HOST)
