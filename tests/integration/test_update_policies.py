"""A container's own update policy on the real stack: a maintenance window that is closed now
holds the update (visible as waiting, with the window's next opening) until the clock reaches
it, moved through the settings rather than waited for; an approval holds it as pending until
`podhook approve`."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import HarnessError, wait_for
from podhook_support import PODHOOK, push, rows_for, start_worker
from redis import Redis

from workers.hosts import forget_host
from workers.wakeups import pending_wakeups

pytestmark = pytest.mark.integration

HOST = "policy-host"


def _podhook(stack, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [PODHOOK, *args],
        env={"PATH": "/usr/bin:/bin", **stack.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_closed_window_holds_the_update_until_the_clock_reaches_its_opening(
    stack, units, spawn, tmp_path: Path
):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    now = datetime.now(UTC)
    start = (now.hour + 3) % 24
    window = f"daily {start:02d}:00-{(start + 1) % 24:02d}:00 UTC"
    v1 = stack.build_and_push("policy/window", "1", marker="window-v1")
    units.container("cwindow", v1.ref, extra_args=["--label", f"io.podhook.window={window}"])
    config = tmp_path / "podhook.toml"
    config.write_text("clock_offset = 0\n")
    worker = start_worker(
        spawn, redis, HOST, config=str(config), reconcile_interval="0", job_retries="0"
    )
    try:
        v1_id = stack.container_image("cwindow")
        v2 = stack.build_and_push("policy/window", "1", marker="window-v2")
        push(redis, v2)
        try:
            wait_for(lambda: rows_for(redis, "cwindow"), 60, "cwindow's first row", interval=0.5)
        except HarnessError:
            pytest.fail(worker.log_text())
        [row] = rows_for(redis, "cwindow")
        assert row["state"] == "waiting", row
        opens = row["until"]
        opening = datetime.fromtimestamp(opens, UTC)
        assert (opening.hour, opening.minute) == (start, 0) and opens > now.timestamp()
        assert f"maintenance window '{window}' of cwindow is closed" in row["reason"]
        assert opening.strftime("%Y-%m-%d %H:%M:%S UTC") in row["reason"]
        assert pending_wakeups(redis, HOST) == {v1.ref: opens}
        # Visible where jobs are: the job list counts it as waiting.
        assert "1 waiting" in _podhook(stack, "jobs", "--host", HOST)
        assert stack.container_image("cwindow") == v1_id

        # The clock moves to a minute after the opening: the worker sees the settings change.
        offset = opens + 60 - datetime.now(UTC).timestamp()
        config.write_text(f"clock_offset = {offset:.0f}\n")
        try:
            wait_for(
                lambda: [r["state"] for r in rows_for(redis, "cwindow")][-1] == "updated",
                90,
                "cwindow updated once its window opened",
                interval=0.5,
            )
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'cwindow')}\n{worker.log_text()}")
        assert stack.container_image("cwindow") == stack.image_info(v2.ref)["Id"]
    finally:
        worker.stop()
        forget_host(redis, HOST)


def test_an_update_that_needs_approval_waits_as_pending_until_approved(stack, units, spawn):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    stack.registry.configure(None)
    v1 = stack.build_and_push("policy/approval", "1", marker="approval-v1")
    units.container("capproval", v1.ref, extra_args=["--label", "io.podhook.approval=required"])
    worker = start_worker(spawn, redis, HOST, reconcile_interval="0", job_retries="0")
    try:
        v1_id = stack.container_image("capproval")
        v2 = stack.build_and_push("policy/approval", "1", marker="approval-v2")
        push(redis, v2)
        try:
            wait_for(lambda: rows_for(redis, "capproval"), 60, "capproval's first row")
        except HarnessError:
            pytest.fail(worker.log_text())
        [row] = rows_for(redis, "capproval")
        assert row["state"] == "pending", row
        assert f"podhook approve {v1.ref} --digest {v2.digest}" in row["reason"]
        listed = _podhook(stack, "approvals")
        assert v1.ref in listed and HOST in listed and "capproval" in listed
        assert stack.container_image("capproval") == v1_id

        approved = _podhook(stack, "approve", v1.ref)
        assert f"approved {v1.ref}@{v2.digest} on {HOST}" in approved
        try:
            wait_for(
                lambda: [r["state"] for r in rows_for(redis, "capproval")][-1] == "updated",
                90,
                "capproval updated once approved",
                interval=0.5,
            )
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'capproval')}\n{worker.log_text()}")
        assert stack.container_image("capproval") == stack.image_info(v2.ref)["Id"]
        assert "no update waits for an approval" in _podhook(stack, "approvals")
    finally:
        worker.stop()
        forget_host(redis, HOST)
