"""`podhook worker --processes N`: N workers on the host queue, all stopped by one SIGTERM,
whatever the worker was doing when it came."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Worker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from workers.hosts import get_hosts
from workers.podman_runtime import ContainerRuntimeError
from workers.queueing import get_queue
from workers.settings import load_settings
from workers.worker import HostWorker


def test_pool_starts_n_workers_and_stops_them_on_sigterm(redis, redis_url, tmp_path):
    env = {
        **os.environ,
        "PODHOOK_REDIS_URL": redis_url,
        "PODHOOK_HOST_ID": "pool-test",
        "PODHOOK_PODMAN_URL": f"unix://{tmp_path}/absent.sock",
    }
    podhook = str(Path(sys.executable).parent / "podhook")
    parent = subprocess.Popen(
        [podhook, "worker", "--processes", "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    queue = get_queue(redis, "pool-test")
    try:
        deadline = time.monotonic() + 30
        while Worker.count(connection=redis, queue=queue) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Worker.count(connection=redis, queue=queue) == 3
        assert "pool-test" in get_hosts(redis)
        children = {w.pid for w in Worker.all(connection=redis, queue=queue)}
        assert parent.pid not in children and len(children) == 3

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0
        for pid in children:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(pid), f"worker {pid} outlived its pool"
        # (RQ's own worker registry is not checked here: a worker stopped while blocked on
        # Redis may leave its entry to expire with its heartbeat, which is RQ's business.)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes: it waits only for its parent to reap it.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


def _host_worker(redis, tmp_path) -> HostWorker:
    settings = load_settings(
        {
            "PODHOOK_HOST_ID": "stop-test",
            "PODHOOK_PODMAN_URL": f"unix://{tmp_path}/absent.sock",
        }
    )
    return HostWorker(
        [get_queue(redis, "stop-test")],
        connection=redis,
        serializer=JSONSerializer,
        settings=settings,
    )


@pytest.fixture
def signal_handlers():
    """Put SIGTERM's and SIGINT's handlers back after a test (RQ's request_stop sets them)."""
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGTERM, saved[0])
    signal.signal(signal.SIGINT, saved[1])


def test_a_stop_swallowed_during_the_heartbeat_still_stops_an_idle_worker(
    redis, tmp_path, monkeypatch, signal_handlers
):
    # SIGTERM lands while the heartbeat asks Podman: RQ raises StopRequested right there, and
    # the Podman client turns it into a ContainerRuntimeError, which the heartbeat logs.
    worker = _host_worker(redis, tmp_path)

    def refresh_interrupted(_redis, _settings):
        try:
            worker.request_stop(signal.SIGTERM, None)
        except Exception as error:
            raise ContainerRuntimeError(f"listing containers: {error!r}") from error

    monkeypatch.setattr("workers.worker.refresh_inventory", refresh_interrupted)
    worker.set_state("idle")
    with pytest.raises(StopRequested):
        worker.heartbeat()


def test_a_stop_during_a_job_waits_for_the_job(redis, tmp_path, signal_handlers):
    worker = _host_worker(redis, tmp_path)
    worker.set_state("busy")
    worker.request_stop(signal.SIGTERM, None)  # warm: no raise while the horse works
    worker.heartbeat()
    worker.set_state("idle")
    with pytest.raises(StopRequested):
        worker.heartbeat()
