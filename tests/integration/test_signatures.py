"""Signed images on the real stack: Podman's signature policy requires a GPG signature for the
test repository. A push of an unsigned image is refused at the pull: a `failed` row naming the
policy's reason, one attempt although retries are allowed, notified, the container left on its
image; a push signed with ``skopeo copy --sign-by`` is updated. Signatures that cannot be
fetched (their lookaside server down) should be a passing failure, as a registry that is down.

The policy is the worker's Podman service's own, not the host's: a second API service over the
stack's storage whose HOME holds ``.config/containers/policy.json`` and ``registries.d``
(``Stack.start_extra_podman_service``); /etc is checked to be left as it was.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from harness import HarnessError, free_port, generate_gpg_key, wait_for, write_signature_config
from podhook_support import push, rows_for, start_worker
from redis import Redis
from rq.job import Job, JobStatus

from workers import audit
from workers.hosts import forget_host
from workers.queueing import JobOptions

pytestmark = pytest.mark.integration

HOST = "signatures-host"
REPOSITORY = "signatures/web"
NOT_SIGNED = "Source image rejected: A signature was required, but no signature exists"
# What the host's signature setup is made of: none of it may change.
HOST_PATHS = ("/etc/containers", "/var/lib/containers/sigstore")


class Receiver:
    """An apprise ``json://`` target on 127.0.0.1: keeps each notification's JSON body."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        payloads = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                payloads.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join(timeout=5)


def snapshot(paths: tuple[str, ...]) -> dict[str, bytes | None]:
    """Every file under ``paths`` with its content (a directory as None)."""
    found: dict[str, bytes | None] = {}
    for top in map(Path, paths):
        for path in [top, *top.rglob("*")] if top.exists() else []:
            found[str(path)] = None if path.is_dir() else path.read_bytes()
    return found


def reports_of(redis: Redis, job_id: str) -> list[dict[str, Any]]:
    """The reports the attempts of job ``job_id`` left in the audit trail."""
    return [
        e.data for e in audit.read(redis, kind="outcome", limit=500) if e.data.get("job") == job_id
    ]


def job_ended(redis: Redis, job_id: str) -> Job | None:
    job = Job.fetch(job_id, connection=redis)
    return job if job.get_status() in (JobStatus.FAILED, JobStatus.FINISHED) else None


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg (scripts/install-deps.sh)")
def test_an_unsigned_image_is_refused_once_and_a_signed_one_is_updated(
    stack, units, spawn, receiver
):
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    host_before = snapshot(HOST_PATHS)
    work = stack.root / "signatures"
    key = generate_gpg_key(work / "gnupg")
    namespace = f"{stack.registry.host}/{REPOSITORY}"
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                namespace: [
                    {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key.public_key)}
                ]
            }
        },
    }
    home = work / "home"
    registries_d = write_signature_config(home, policy, {namespace: work / "lookaside"})
    service = stack.start_extra_podman_service("podman-signatures", home)
    worker = None
    try:
        # v1 was pulled before the policy (by the stack's own Podman): the container runs it.
        v1 = stack.build_and_push(REPOSITORY, "1", marker="sig-v1")
        unit = units.container("csigned", v1.ref)
        started = stack.systemd.invocation_id(unit)
        v1_image = stack.container_info("csigned")["image_id"]
        worker = start_worker(
            spawn,
            redis,
            HOST,
            podman_url=service.url,
            settle_seconds="1",
            restart_timeout="30",
            reconcile_interval="0",
            job_retries="3",
            notify_urls=receiver.url,
        )

        v2 = stack.build_and_push(REPOSITORY, "1", marker="sig-v2")  # not signed
        refused = push(redis, v2, JobOptions(retries=3))
        try:
            job = wait_for(lambda: job_ended(redis, refused.job_id), 120, "v2's job to end", 0.5)
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'csigned')}\n{worker.log_text()}")
        [row] = rows_for(redis, "csigned")
        assert row["state"] == "failed", row
        assert NOT_SIGNED in row["reason"] and v1.ref in row["reason"], row
        assert row["retryable"] is False, row
        # One attempt: RQ ended the job failed with its retries unused, none was scheduled.
        assert job.get_status() == JobStatus.FAILED and job.retries_left == 0
        assert len(reports_of(redis, refused.job_id)) == 1
        wait_for(lambda: receiver.payloads, 60, "the failure's notification", 0.2)
        [told] = receiver.payloads
        assert told["type"] == "failure" and NOT_SIGNED in told["message"], told
        # Nothing changed: the unit was not restarted, the container runs v1.
        assert stack.systemd.invocation_id(unit) == started
        assert stack.podman("exec", "csigned", "cat", "/version").strip() == "sig-v1"
        assert stack.container_info("csigned")["image_id"] == v1_image

        v3 = stack.build_and_push(
            REPOSITORY, "1", marker="sig-v3", sign_by=key, registries_d=registries_d
        )
        assert list((work / "lookaside").rglob("signature-1")), "skopeo wrote no signature"
        signed = push(redis, v3, JobOptions(retries=3))
        try:
            job = wait_for(lambda: job_ended(redis, signed.job_id), 120, "v3's job to end", 0.5)
        except HarnessError:
            pytest.fail(f"rows: {rows_for(redis, 'csigned')}\n{worker.log_text()}")
        row = rows_for(redis, "csigned")[-1]
        assert row["state"] == "updated", row
        assert job.get_status() == JobStatus.FINISHED
        stack.wait_unit(unit, "active", 30)
        assert stack.podman("exec", "csigned", "cat", "/version").strip() == "sig-v3"
        assert stack.container_info("csigned")["image_digest"] == v3.digest
        assert len(receiver.payloads) == 1  # `updated` is not among the notified states
    finally:
        if worker is not None:
            worker.stop()
        forget_host(redis, HOST)
        service.stop()
        key.stop_agent()
    assert not service.process.alive()
    assert snapshot(HOST_PATHS) == host_before


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg (scripts/install-deps.sh)")
def test_a_signature_server_that_cannot_be_reached_is_a_passing_failure(stack, units, spawn):
    """The policy needs signatures that live on a web server (a lookaside), and that server is
    down: Podman cannot tell whether the image is signed. Like a registry that is down, this
    should be retried, not reported as a refusal."""
    redis = Redis.from_url(stack.env["PODHOOK_REDIS_URL"])
    work = stack.root / "signatures-down"
    key = generate_gpg_key(work / "gnupg")
    repository = "signatures/down"
    namespace = f"{stack.registry.host}/{repository}"
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                namespace: [
                    {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key.public_key)}
                ]
            }
        },
    }
    down = f"http://127.0.0.1:{free_port()}/sigstore"  # nothing listens there
    home = work / "home"
    write_signature_config(home, policy, {namespace: down})
    service = stack.start_extra_podman_service("podman-signatures-down", home)
    host = "signatures-down-host"
    worker = None
    try:
        v1 = stack.build_and_push(repository, "1", marker="down-v1")
        units.container("cdown", v1.ref)
        worker = start_worker(
            spawn,
            redis,
            host,
            podman_url=service.url,
            settle_seconds="1",
            restart_timeout="120",  # the default: this test waits on a pull, not a restart
            reconcile_interval="0",
        )
        v2 = stack.build_and_push(repository, "1", marker="down-v2")
        push(redis, v2, JobOptions(retries=3))
        try:
            wait_for(lambda: rows_for(redis, "cdown"), 120, "cdown's first row", 0.5)
        except HarnessError:
            pytest.fail(worker.log_text())
        row = rows_for(redis, "cdown")[0]
        assert row["state"] == "failed", row
        assert "Source image rejected" in row["reason"] and "connection refused" in row["reason"]
        assert row["retryable"] is True, row["reason"]
    finally:
        if worker is not None:
            worker.stop()
        forget_host(redis, host)
        service.stop()
        key.stop_agent()
