"""End to end on real parts: a registry push restarts the right systemd unit, and nothing else.

Each test starts from a real `skopeo copy` to the distribution registry, whose notification
reaches the app under gunicorn; a real worker pulls through the Podman API and restarts units
of a real systemd user manager over D-Bus.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from workers import audit
from workers.events import make_event
from workers.hosts import forget_host, get_hosts
from workers.joblog import get_job

pytestmark = pytest.mark.integration

TOKEN = "e2e-token-7f3a9c"
HOST_ID = "e2e-host"
EXITS_AT_ONCE = ["sh", "-c", "echo broken release; exit 3"]


class Podhook:
    """The app under gunicorn and one worker, started with the stack's environment."""

    def __init__(self, stack: Any, port: int) -> None:
        self.stack = stack
        self.url = f"http://127.0.0.1:{port}"
        self.redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])

    def job_for(self, pushed: Any, timeout: float = 30.0) -> str:
        """The job the registry's notification of ``pushed`` reached on this host (a new job,
        or the waiting one it joined), from the audit trail of deliveries."""
        event = make_event(self.stack.registry.host, pushed.repository, pushed.tag, pushed.digest)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.deliveries():
                for job in entry.data.get("jobs", []):
                    if (job.get("host"), job.get("reference"), job.get("digest")) == (
                        HOST_ID,
                        event.reference,
                        event.digest,
                    ):
                        return str(job["job"])
            time.sleep(0.1)
        pytest.fail(f"no delivery of {event.reference}@{event.digest} reached {HOST_ID}")

    def wait_job(self, job_id: str, timeout: float = 90.0) -> Any:
        """Wait for a job to finish or fail (retries of a failed job are off in these tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = get_job(self.redis, job_id)
            if record is not None and record.state in ("finished", "failed"):
                return record
            time.sleep(0.1)
        record = get_job(self.redis, job_id)
        pytest.fail(f"job {job_id} did not end in {timeout}s (now: {record})")

    def deliveries(self) -> list[audit.AuditEntry]:
        return audit.read(self.redis, kind="delivery")

    def post(self, path: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def podhook(stack: Any) -> Any:
    from harness import free_port

    port = free_port()
    env = {
        "PODHOOK_WEBHOOK_TOKEN": TOKEN,
        "PODHOOK_HOST_ID": HOST_ID,
        "PODHOOK_SETTLE_SECONDS": "2",
        "PODHOOK_RESTART_TIMEOUT": "60",
        "PODHOOK_JOB_RETRIES": "0",
    }
    podhook_bin = str(Path(sys.executable).parent / "podhook")
    app = stack.start_process(
        [podhook_bin, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env=env,
        name="gunicorn",
        ready_url=f"http://127.0.0.1:{port}/healthz",
    )
    running = Podhook(stack, port)
    worker = stack.start_process(
        [podhook_bin, "worker"],
        env=env,
        name="worker",
        ready=lambda: HOST_ID in get_hosts(running.redis),
    )
    stack.registry.configure(f"{running.url}/v1/webhooks/distribution", TOKEN)
    yield running
    stack.registry.configure(None)
    worker.stop()
    app.stop()
    forget_host(running.redis, HOST_ID)  # later tests must not queue pushes for this host


def start_events(stack: Any, container: str, since: float) -> int:
    """How many times Podman started ``container`` since ``since`` (a Unix time)."""
    out = stack.podman(
        "events",
        "--stream=false",
        "--since",
        str(int(since)),
        "--filter",
        "event=start",
        "--filter",
        f"container={container}",
        "--format",
        "{{.Name}}",
    )
    return sum(1 for line in out.splitlines() if line.strip() == container)


def test_push_restarts_the_unit_on_the_new_image(stack, podhook, units):
    v1 = stack.build_and_push("e2e/web", "1.0", marker="web-v1")
    unit = units.container("web", v1.ref)
    before = stack.systemd.invocation_id(unit)

    pushed_at = time.monotonic()
    v2 = stack.build_and_push("e2e/web", "1.0", marker="web-v2")
    record = podhook.wait_job(podhook.job_for(v2))
    stack.wait_unit(unit, "active", 30, not_invocation=before)
    elapsed = time.monotonic() - pushed_at

    assert record.state == "finished", record.error
    [row] = record.report.rows
    assert (row.container_name, row.unit, row.state) == ("web", unit, "updated")
    assert row.image == v1.ref
    info = stack.container_info("web")
    assert info["image_digest"] == v2.digest
    assert row.new_image == info["image_id"] != row.old_image
    assert stack.podman("exec", "web", "cat", "/version").strip() == "web-v2"
    print(f"\npush-to-restart: {elapsed:.2f}s from skopeo copy to the unit active on v2")

    # The same digest pushed again: the host looks, finds it runs that digest, and neither
    # pulls nor restarts.
    invocation = stack.systemd.invocation_id(unit)
    seen = len(podhook.deliveries())
    stack.push_image("localhost/e2e/web:1.0", "e2e/web", "1.0")
    deadline = time.monotonic() + 30
    while len(podhook.deliveries()) == seen and time.monotonic() < deadline:
        time.sleep(0.1)
    [again] = podhook.deliveries()[: len(podhook.deliveries()) - seen]
    [job] = again.data["jobs"]
    repeat = podhook.wait_job(job["job"])
    assert repeat.state == "finished", repeat.error
    [row] = repeat.report.rows
    assert (row.state, row.reason) == ("unchanged", f"already runs {v2.digest}")
    assert "pulled" not in row.timings
    assert stack.systemd.invocation_id(unit) == invocation


def test_image_that_does_not_come_up_is_rolled_back(stack, podhook, units):
    v1 = stack.build_and_push("e2e/roll", "2", marker="roll-v1")
    unit = units.container("roll", v1.ref)
    v1_image = stack.container_image("roll")

    v3 = stack.build_and_push("e2e/roll", "2", marker="roll-v3", command=EXITS_AT_ONCE)
    record = podhook.wait_job(podhook.job_for(v3))

    assert record.state == "failed", record.report
    [row] = record.report.rows
    assert row.state == "rolled_back", row.reason
    assert row.unit == unit and row.old_image == v1_image
    stack.wait_unit(unit, "active", 30)
    assert stack.container_image("roll") == v1_image
    assert stack.podman("exec", "roll", "cat", "/version").strip() == "roll-v1"


def test_unlabeled_containers_are_left_alone_and_unit_less_ones_fail_loudly(stack, podhook, units):
    v1 = stack.build_and_push("e2e/shared", "3", marker="shared-v1")
    units.container("plain", v1.ref, autoupdate=None)
    plain_image = stack.container_image("plain")
    stack.podman(
        "run",
        "-d",
        "--name",
        "loose",
        "--stop-timeout",
        "1",
        "--label",
        "io.containers.autoupdate=registry",
        v1.ref,
    )

    v2 = stack.build_and_push("e2e/shared", "3", marker="shared-v2")
    record = podhook.wait_job(podhook.job_for(v2))

    # As `podman auto-update` does: a labeled container without its unit is an error.
    assert record.state == "failed"
    rows = {row.container_name: row for row in record.report.rows}
    assert set(rows) == {"loose"}
    assert rows["loose"].state == "failed"
    assert rows["loose"].reason.endswith("no PODMAN_SYSTEMD_UNIT label found")
    assert stack.container_image("plain") == plain_image
    assert stack.container_image("loose") == plain_image


def test_two_containers_of_one_kube_unit_restart_it_once(stack, podhook, units):
    v1 = stack.build_and_push("e2e/pair", "4", marker="pair-v1")
    since = time.time() - 1
    unit = units.kube("pair", v1.ref)
    starts = {name: start_events(stack, name, since) for name in ("pair-a", "pair-b")}
    assert starts == {"pair-a": 1, "pair-b": 1}

    v2 = stack.build_and_push("e2e/pair", "4", marker="pair-v2")
    record = podhook.wait_job(podhook.job_for(v2))

    assert record.state == "finished", record.error
    rows = sorted(record.report.rows, key=lambda row: row.container_name)
    assert [(r.container_name, r.unit, r.state) for r in rows] == [
        ("pair-a", unit, "updated"),
        ("pair-b", unit, "updated"),
    ]
    stack.wait_unit(unit, "active", 30)
    for name in ("pair-a", "pair-b"):
        assert stack.container_info(name)["image_digest"] == v2.digest
        assert start_events(stack, name, since) == starts[name] + 1


def test_delivery_without_the_token_is_refused_and_queues_nothing(stack, podhook):
    body = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "e2e/web",
                    "tag": "9",
                    "digest": "sha256:" + "9" * 64,
                },
                "request": {"host": stack.registry.host},
            }
        ]
    }
    jobs_before = len(podhook.redis.keys("rq:job:*"))
    for token in (None, "not-the-token"):
        status, answer = podhook.post("/v1/webhooks/distribution", body, token)
        assert status == 401
        assert answer["error"] in (
            "missing Authorization header",
            "wrong token in Authorization header",
        )
    assert len(podhook.redis.keys("rq:job:*")) == jobs_before


def test_generic_source_drives_the_same_path(stack, podhook, units):
    v1 = stack.build_and_push("e2e/ci", "5", marker="ci-v1")
    unit = units.container("ci", v1.ref)
    before = stack.systemd.invocation_id(unit)
    # Pushed without a notification: the generic webhook (a CI pipeline) tells podhook.
    stack.registry.configure(None)
    try:
        v2 = stack.build_and_push("e2e/ci", "5", marker="ci-v2")
    finally:
        stack.registry.configure(f"{podhook.url}/v1/webhooks/distribution", TOKEN)
    status, answer = podhook.post(
        "/v1/webhooks/generic", {"image": v2.ref, "digest": v2.digest}, TOKEN
    )
    assert status == 202, answer
    [job_id] = answer["queued"]
    record = podhook.wait_job(job_id)
    assert record.state == "finished", record.error
    assert [row.state for row in record.report.rows] == ["updated"]
    stack.wait_unit(unit, "active", 30, not_invocation=before)
    assert stack.container_info("ci")["image_digest"] == v2.digest
