"""Fixtures shared by every test: a real redis-server for the session, flushed around each test."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

# The integration harness is plain code in tests/integration (imported as `harness` there).
sys.path.insert(0, str(Path(__file__).resolve().parent / "integration"))
from harness import free_port, start_redis  # noqa: E402

__all__ = ["free_port"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private redis-server started for this test session."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/install-deps.sh installs it)")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A client of the session's Redis, flushed before and after the test."""
    client = Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.flushall()
    client.close()
