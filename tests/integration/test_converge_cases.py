"""Convergence cases on the real stack, each through a real `podhook worker` (and, where a
registry notification is the route, `podhook serve`): a push nobody delivered reaches the
containers through the periodic reconcile; a unit stopped during a push runs the pushed image
once started; a mirror that still serves the old image makes the job retry until it catches
up; one unit failing on a pushed image rolls back every unit of the reference.

Each test has a host of its own, forgotten at the end, and repositories under ``cases/``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import (
    STACK_MARKER,
    HarnessError,
    ManagedProcess,
    PushedImage,
    free_port,
    run,
    start_registry,
    wait_for,
)
from podhook_support import PODHOOK, start_worker
from redis import Redis

from workers import audit
from workers.desired import get_desired
from workers.events import make_event
from workers.hosts import forget_host
from workers.inventory import get_inventory
from workers.joblog import JobRecord, get_job, list_jobs

pytestmark = pytest.mark.integration

TOKEN = "cases-token-5b2e81"
# The periodic reconcile's interval in the first test: the lowest the settings admit is 1 s
# (0 turns it off); a few seconds leave the start-up reconcile time to end before the next.
RECONCILE_INTERVAL = 5
# A command for the pushed image that refuses to run in a container given CASES_BREAK, and
# otherwise runs like the harness's default (exits at once on SIGTERM).
BREAKS_WITH_CASES_BREAK = (
    "/bin/sh",
    "-c",
    'if [ -n "$CASES_BREAK" ]; then echo "this release refuses CASES_BREAK"; exit 3; fi; '
    'trap "exit 0" TERM; while :; do sleep 1 & wait; done',
)


# --------------------------------------------------------------------------------------------
# podhook's processes and what they record


def redis_of(stack: Any) -> Redis:
    return Redis.from_url(stack.env["PODHOOK_REDIS_URL"])


def start_webhook(
    spawn: Callable[..., ManagedProcess], registry_notifications: Callable[..., None]
) -> ManagedProcess:
    """`podhook serve` with the webhook token, the registry's notifications pointed at it."""
    port = free_port()
    app = spawn(
        [PODHOOK, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env={"PODHOOK_WEBHOOK_TOKEN": TOKEN},
        name="gunicorn",
        ready_url=f"http://127.0.0.1:{port}/healthz",
        timeout=60,
    )
    registry_notifications(f"http://127.0.0.1:{port}/v1/webhooks/distribution", TOKEN)
    return app


def wait_or_fail(
    predicate: Callable[[], Any], timeout: float, what: str, *processes: ManagedProcess
) -> Any:
    """``wait_for`` that fails the test with the tails of ``processes``' logs."""
    try:
        return wait_for(predicate, timeout, what, interval=0.2)
    except HarnessError as error:
        logs = "".join(f"\n--- {p.name} ({p.log_path}):\n{p.log_text()}" for p in processes)
        pytest.fail(f"{error}{logs}")


def reference_of(stack: Any, pushed: PushedImage) -> str:
    """The reference a push of ``pushed`` names, as routing and the desired state key it."""
    return make_event(stack.registry.host, pushed.repository, pushed.tag).reference


def reports(redis: Redis, host: str) -> list[dict[str, Any]]:
    """Every report the jobs of ``host`` saved (one per attempt), oldest first."""
    entries = audit.read(redis, kind="outcome", limit=2000)
    return [entry.data for entry in reversed(entries) if entry.data.get("host") == host]


def row_of(report: dict[str, Any], container: str) -> dict[str, Any] | None:
    """The report's row for ``container``, if it has one."""
    rows = [row for row in report.get("containers", []) if row["container_name"] == container]
    return rows[0] if rows else None


def job_for(redis: Redis, host: str, reference: str, digest: str, *logs: ManagedProcess) -> str:
    """The job a delivery of ``reference@digest`` reached on ``host`` (from the audit trail)."""

    def delivered() -> str | None:
        for entry in audit.read(redis, kind="delivery", limit=2000):
            for job in entry.data.get("jobs", []):
                if (job.get("host"), job.get("reference"), job.get("digest")) == (
                    host,
                    reference,
                    digest,
                ):
                    return str(job["job"])
        return None

    return str(wait_or_fail(delivered, 60, f"a delivery of {reference}@{digest} to {host}", *logs))


def wait_job(redis: Redis, job_id: str, timeout: float, *logs: ManagedProcess) -> JobRecord:
    """The job once it has finished or failed for good (a retry in between is ``scheduled``)."""

    def ended() -> JobRecord | None:
        record = get_job(redis, job_id)
        return record if record is not None and record.state in ("finished", "failed") else None

    return wait_or_fail(ended, timeout, f"job {job_id} to end", *logs)  # type: ignore[no-any-return]


def copy_image(stack: Any, source: str, destination: str) -> None:
    """skopeo copy between two registries of the stack (plain HTTP); the manifest is kept, so
    the digest is the same in both."""
    run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{source}",
            f"docker://{destination}",
        ],
        stack.build_env,
    )


# --------------------------------------------------------------------------------------------
# the cases


def test_a_push_never_delivered_is_applied_by_the_periodic_reconcile(stack, units, spawn):
    host = "cases-periodic"
    redis = redis_of(stack)
    stack.registry.configure(None)  # no notifications: the webhook never hears of a push
    v1 = stack.build_and_push("cases/periodic", "1", marker="periodic-v1")
    unit = units.container("cperiodic", v1.ref)

    started = time.monotonic()
    worker = start_worker(spawn, redis, host, reconcile_interval=str(RECONCILE_INTERVAL))
    try:
        first = wait_or_fail(
            lambda: [r for r in reports(redis, host) if r["kind"] == "reconcile"],
            120,
            "the start-up reconcile",
            worker,
        )[0]
        assert (row_of(first, "cperiodic") or {}).get("state") == "unchanged", first
        print(f"\nstart-up reconcile: done {time.monotonic() - started:.2f}s after the start")

        pushed_at, pushed = time.time(), time.monotonic()
        v2 = stack.build_and_push("cases/periodic", "1", marker="periodic-v2")

        def applied() -> dict[str, Any] | None:
            for report in reports(redis, host):
                row = row_of(report, "cperiodic")
                if row is not None and row["state"] == "updated":
                    return report
            return None

        report = wait_or_fail(applied, 120, "a reconcile that updates cperiodic", worker)
        print(
            f"periodic reconcile (every {RECONCILE_INTERVAL}s): cperiodic updated "
            f"{time.monotonic() - pushed:.2f}s after the push"
        )
        assert report["kind"] == "reconcile" and report["reference"] == "*"
        assert report["job"] != first["job"]
        assert report["started_at"] > pushed_at
        row = row_of(report, "cperiodic")
        assert row is not None and row["reason"] == f"restarted {unit} on the new image"
        # No push was ever delivered, so no desired state, and no converge job, exists.
        assert get_desired(redis, reference_of(stack, v2)) is None
        assert [r["kind"] for r in reports(redis, host) if r["kind"] != "reconcile"] == []

        stack.wait_unit(unit, "active", 60)
        assert stack.container_info("cperiodic")["image_digest"] == v2.digest
        assert stack.podman("exec", "cperiodic", "cat", "/version").strip() == "periodic-v2"
    finally:
        worker.stop()
        forget_host(redis, host)


def test_a_unit_stopped_during_a_push_runs_the_pushed_image_once_started(
    stack, units, spawn, registry_notifications
):
    host = "cases-stopped"
    redis = redis_of(stack)
    stack.registry.configure(None)
    v1 = stack.build_and_push("cases/stopped", "1", marker="stopped-v1")
    unit = units.container("cstopped", v1.ref)
    v1_image = stack.container_image("cstopped")
    reference = reference_of(stack, v1)

    # No reconcile at all: only the push and the unit's start can bring the pushed image.
    worker = start_worker(spawn, redis, host, reconcile_interval="0")
    try:
        app = start_webhook(spawn, registry_notifications)

        def listed() -> bool | None:
            inventory = get_inventory(redis, host)
            if inventory is None:
                return None
            return any(c["name"] == "cstopped" for c in inventory["containers"])

        wait_or_fail(listed, 90, f"{host}'s inventory to list cstopped", worker)
        stack.systemctl("stop", unit)
        stack.wait_unit(unit, "inactive", 60)
        # The worker follows Podman's events: the stopped container leaves its inventory.
        wait_or_fail(lambda: listed() is False, 60, f"{host}'s inventory to drop cstopped", worker)

        v2 = stack.build_and_push("cases/stopped", "1", marker="stopped-v2")

        def recorded() -> bool:
            desired = get_desired(redis, reference)
            return desired is not None and desired.digest == v2.digest

        wait_or_fail(
            recorded,
            60,
            f"the delivery of {reference}@{v2.digest} to be recorded",
            app,
        )
        # Routing sends the push to no host that runs nothing of the reference; had it come
        # here, the job must have found nothing running to act on.
        routed = [
            job
            for entry in audit.read(redis, kind="delivery", limit=2000)
            for job in entry.data.get("jobs", [])
            if (job["host"], job["reference"], job["digest"]) == (host, reference, v2.digest)
        ]
        for job in routed:
            record = wait_job(redis, job["job"], 120, worker)
            assert [row.container_name for row in record.report.rows] == []
        print(f"\npush while stopped: {len(routed)} job(s) reached {host}")
        assert stack.image_info(v1.ref)["Id"] == v1_image  # the tag still names v1 here

        started = time.monotonic()
        stack.systemctl("start", unit)
        wait_or_fail(
            lambda: stack.container_info("cstopped")["image_digest"] == v2.digest,
            120,
            "cstopped on the pushed image",
            worker,
        )
        print(f"started unit on the pushed image {time.monotonic() - started:.2f}s after start")
        stack.wait_unit(unit, "active", 60)
        assert stack.podman("exec", "cstopped", "cat", "/version").strip() == "stopped-v2"

        # The unit came up on v1 (its tag), and a converge the start asked for moved it (its
        # report is saved once the unit has stayed up for the settle window).
        def converged() -> list[dict[str, Any]]:
            return [
                r
                for r in reports(redis, host)
                if r["kind"] == "converge"
                and (row_of(r, "cstopped") or {}).get("state") == "updated"
            ]

        [report] = wait_or_fail(converged, 60, "the converge job's report", worker)
        assert report["reference"] == reference and report["event"]["digest"] == v2.digest
        row = row_of(report, "cstopped")
        assert row is not None and row["old_image"] == v1_image
        assert row["new_image"] == stack.container_image("cstopped") != v1_image
    finally:
        worker.stop()
        forget_host(redis, host)


def test_a_mirror_serving_the_old_image_is_retried_until_it_catches_up(
    stack, units, spawn, registry_notifications
):
    host = "cases-mirror"
    redis = redis_of(stack)
    stack.registry.configure(None)
    v1 = stack.build_and_push("cases/mirrored", "1", marker="mirrored-v1")
    unit = units.container("cmirrored", v1.ref)
    reference = reference_of(stack, v1)
    mirror = start_registry(
        Path(tempfile.mkdtemp(prefix="mirror-", dir=stack.root)),
        env={STACK_MARKER: str(stack.root)},
    )
    try:
        mirrored = f"{mirror.host}/cases/mirrored:1"
        copy_image(stack, v1.pinned, mirrored)
        assert mirror.manifest_digest("cases/mirrored", "1") == v1.digest
        with stack.registry_mirrors([mirror.host]):
            worker = start_worker(spawn, redis, host, reconcile_interval="0", job_retries="3")
            try:
                app = start_webhook(spawn, registry_notifications)
                pushed = time.monotonic()
                v2 = stack.build_and_push("cases/mirrored", "1", marker="mirrored-v2")
                job_id = job_for(redis, host, reference, v2.digest, app)

                def lagging() -> list[dict[str, Any]]:
                    return [r for r in reports(redis, host) if r.get("job") == job_id]

                first = wait_or_fail(lagging, 120, f"the first attempt of {job_id}", worker)[0]
                print(f"\nfirst attempt ended {time.monotonic() - pushed:.2f}s after the push")
                assert [(r["container_name"], r["state"]) for r in first["containers"]] == [
                    ("cmirrored", "failed")
                ]
                assert f"not the pushed {v2.digest}" in first["containers"][0]["reason"]
                assert stack.container_info("cmirrored")["image_digest"] == v1.digest

                caught_up = time.monotonic()
                copy_image(stack, v2.pinned, mirrored)
                assert mirror.manifest_digest("cases/mirrored", "1") == v2.digest
                record = wait_job(redis, job_id, 240, worker)
                print(
                    f"retried job applied the push {time.monotonic() - caught_up:.2f}s after "
                    f"the mirror caught up ({len(lagging())} attempts)"
                )

                assert record.state == "finished", record.error
                assert [(r.container_name, r.state) for r in record.report.rows] == [
                    ("cmirrored", "updated")
                ]
                attempts = lagging()
                assert attempts[-1]["containers"] == record.report.to_dict()["containers"]
                for attempt in attempts[:-1]:
                    [row] = attempt["containers"]
                    assert row["state"] == "failed", row
                    assert row["reason"].endswith("the registry does not serve it yet"), row
                stack.wait_unit(unit, "active", 60)
                assert stack.container_info("cmirrored")["image_digest"] == v2.digest
                assert stack.podman("exec", "cmirrored", "cat", "/version").strip() == (
                    "mirrored-v2"
                )
            finally:
                worker.stop()
                forget_host(redis, host)
    finally:
        mirror.stop()


def test_one_unit_failing_on_a_pushed_image_rolls_back_every_unit_of_the_reference(
    stack, units, spawn, registry_notifications
):
    host = "cases-rollback"
    redis = redis_of(stack)
    stack.registry.configure(None)
    v1 = stack.build_and_push("cases/pair", "1", marker="pair-v1")
    # Units restart in name order: the healthy one first, so that it has been restarted on
    # the new image when the other one fails on it.
    healthy = units.container("crollback-a", v1.ref)
    failing = units.container("crollback-b", v1.ref, extra_args=["-e", "CASES_BREAK=1"])
    v1_image = stack.container_image("crollback-a")
    assert stack.container_image("crollback-b") == v1_image
    reference = reference_of(stack, v1)

    worker = start_worker(spawn, redis, host, reconcile_interval="0")
    try:
        app = start_webhook(spawn, registry_notifications)
        pushed = time.monotonic()
        v2 = stack.build_and_push(
            "cases/pair", "1", marker="pair-v2", command=BREAKS_WITH_CASES_BREAK
        )
        record = wait_job(redis, job_for(redis, host, reference, v2.digest, app), 240, worker)
        print(f"\nrolled back {time.monotonic() - pushed:.2f}s after the push")

        assert record.state == "failed", record.report
        rows = {row.container_name: row for row in record.report.rows}
        assert {name: row.state for name, row in rows.items()} == {
            "crollback-a": "rolled_back",
            "crollback-b": "rolled_back",
        }, rows
        assert rows["crollback-b"].unit == failing
        assert rows["crollback-b"].reason.startswith(f"restarting {failing!r}")
        assert rows["crollback-a"].unit == healthy
        assert rows["crollback-a"].reason.startswith(f"{failing} failed: ")
        for row in rows.values():
            assert row.reason.endswith("rolled back to the previous image")
            assert row.old_image == v1_image != row.new_image

        for unit in (healthy, failing):
            stack.wait_unit(unit, "active", 60)
        for name in ("crollback-a", "crollback-b"):
            assert stack.container_image(name) == v1_image
            assert stack.podman("exec", name, "cat", "/version").strip() == "pair-v1"
        assert stack.image_info(v1.ref)["Id"] == v1_image  # the tag names the old image again
        # The one job decided: it was not retried, and nothing converged the reference since.
        assert [r["job"] for r in reports(redis, host)] == [record.id]
    finally:
        worker.stop()
        forget_host(redis, host)


def test_a_rolled_back_reference_stays_rolled_back_when_one_of_its_units_restarts(
    stack, units, spawn, registry_notifications
):
    host = "cases-relapse"
    redis = redis_of(stack)
    stack.registry.configure(None)
    v1 = stack.build_and_push("cases/relapse", "1", marker="relapse-v1")
    other = stack.build_and_push("cases/sentinel", "1", marker="sentinel-v1")
    healthy = units.container("crelapse-a", v1.ref)
    units.container("crelapse-b", v1.ref, extra_args=["-e", "CASES_BREAK=1"])
    sentinel = units.container("crelapse-sentinel", other.ref)
    v1_image = stack.container_image("crelapse-a")
    reference = reference_of(stack, v1)

    worker = start_worker(spawn, redis, host, reconcile_interval="0")
    try:
        app = start_webhook(spawn, registry_notifications)
        v2 = stack.build_and_push(
            "cases/relapse", "1", marker="relapse-v2", command=BREAKS_WITH_CASES_BREAK
        )
        record = wait_job(redis, job_for(redis, host, reference, v2.digest, app), 240, worker)
        states = [row.state for row in record.report.rows]
        if states != ["rolled_back"] * 2:
            pytest.fail(f"the push was not rolled back: {record.report.rows}")

        # crelapse-a's container dies (on the old image, which runs fine): systemd starts it
        # again (Restart=on-failure), from the tag, which names the old image.
        crashed = stack.container_info("crelapse-a")["id"]
        stack.podman("kill", "crelapse-a")

        def restarted() -> bool:
            info = stack.container_info("crelapse-a")
            return info["id"] != crashed and info["state"] == "running"

        wait_or_fail(restarted, 60, "systemd to start crelapse-a again", worker)
        stack.wait_unit(healthy, "active", 60)
        # The worker handles Podman's events one at a time, in order: once its inventory shows
        # the sentinel's new container, it has handled crelapse-a's start.
        before = stack.container_info("crelapse-sentinel")["id"]
        stack.systemctl("restart", sentinel)
        stack.wait_unit(sentinel, "active", 60)
        after = stack.container_info("crelapse-sentinel")["id"]
        if after == before:
            pytest.fail(f"{sentinel} was restarted but runs the same container")

        def seen() -> bool:
            inventory = get_inventory(redis, host) or {"containers": []}
            return any(c["id"] == after for c in inventory["containers"])

        wait_or_fail(seen, 60, f"{host}'s inventory to list the restarted sentinel", worker)

        jobs = [job.id for job in list_jobs(redis, host=host)]
        assert jobs == [record.id], f"jobs after the rollback: {jobs}"
        assert stack.container_image("crelapse-a") == v1_image
        assert stack.container_image("crelapse-b") == v1_image
    finally:
        worker.stop()
        forget_host(redis, host)
