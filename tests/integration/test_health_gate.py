"""Health-gated updates on the real stack: a container created with a health check counts as
updated only once its check passes on the new image; a new image whose check fails is rolled
back, and the row names the check."""

from __future__ import annotations

import pytest
from harness import HarnessError, wait_for
from podhook_support import push, rows_for, start_worker
from redis import Redis

from workers.hosts import forget_host

pytestmark = pytest.mark.integration

HOST = "health-host"
HEALTH_CHECK = ["--health-cmd", "cat /healthy", "--health-retries", "2", "--health-interval", "1s"]


def test_a_healthy_image_is_updated_and_an_unhealthy_one_rolled_back(stack, units, spawn):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    healthy = {"healthy": "yes"}
    v1 = stack.build_and_push("health/web", "1", marker="health-v1", extra_files=healthy)
    unit = units.container("chealth", v1.ref, extra_args=HEALTH_CHECK)
    worker = start_worker(
        spawn,
        redis,
        HOST,
        settle_seconds="1",
        restart_timeout="30",
        reconcile_interval="0",
        job_retries="0",
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
