"""`podhook run`: a private Redis, the app and a worker, all stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from webhook.allinone import REDIS_MISSING, start_private_redis

PODHOOK = str(Path(sys.executable).parent / "podhook")


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except OSError:
        return 0, {}


def test_run_starts_private_redis_app_and_worker_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODHOOK_")} | {
        "PODHOOK_STATE_DIR": str(tmp_path / "state"),
        "PODHOOK_HOST_ID": "allinone",
        "PODHOOK_PODMAN_URL": f"unix://{tmp_path}/absent.sock",
    }
    process = subprocess.Popen(
        [PODHOOK, "run", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while _get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.2)
        state = tmp_path / "state"
        assert (state / "redis.sock").exists()
        token = (state / "webhook-token").read_text().strip()
        assert len(token) >= 32 and oct((state / "webhook-token").stat().st_mode)[-3:] == "600"

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert process.wait(timeout=60) == 0
        output = process.stdout.read().decode()
        assert "started a private Redis at unix://" in output
        assert "stopping" in output
        assert token not in output
        assert not (state / "redis.sock").exists()
        assert (state / "appendonlydir").is_dir() or (state / "appendonly.aof").exists()
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


def test_missing_redis_server_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        start_private_redis(tmp_path)
    assert "PODHOOK_REDIS_URL" in REDIS_MISSING
