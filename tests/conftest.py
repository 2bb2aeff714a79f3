"""Fixtures shared by every test: a real redis-server for the session, flushed around each test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from redis import Redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a private redis-server started for this test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/install-deps.sh installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="podhook-redis-") as workdir:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    raise
                time.sleep(0.05)
        client.close()
        try:
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of the session's Redis, flushed before and after the test."""
    client = Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.flushall()
    client.close()
