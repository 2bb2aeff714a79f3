"""A job that changes nothing answers from the host's published inventory, without asking
Podman; any doubt (a container behind, an old inventory, an update cut short) asks Podman."""

from __future__ import annotations

import time

import pytest

from workers.attempts import Attempt, RedisAttemptJournal
from workers.events import make_event
from workers.hosts import register_host
from workers.inventory import publish_inventory
from workers.jobs import TransientUpdateError, converge
from workers.routing import dispatch_push

HOST = "inv-host"
REF = "registry.example/shop/web:1"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture
def host(redis, redis_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PODHOOK_REDIS_URL", redis_url)
    monkeypatch.setenv("PODHOOK_HOST_ID", HOST)
    # No Podman at all: only the inventory can answer.
    monkeypatch.setenv("PODHOOK_PODMAN_URL", f"unix://{tmp_path}/absent.sock")
    monkeypatch.setenv("PODHOOK_RESTART_TIMEOUT", "1")  # how long a Podman silence is waited out
    register_host(redis, HOST)
    dispatch_push(redis, make_event("registry.example", "shop/web", "1", D1))
    return HOST


def publish(redis, digests, collected_at=None):
    publish_inventory(
        redis,
        HOST,
        {
            "collected_at": time.time() if collected_at is None else collected_at,
            "containers": [
                {
                    "id": "c1",
                    "name": "web",
                    "unit": "container-web.service",
                    "image": REF,
                    "reference": REF,
                    "image_id": "9" * 64,
                    "policy": "registry",
                    "digests": digests,
                }
            ],
        },
    )


def test_a_container_already_on_the_pushed_digest_is_unchanged_without_podman(redis, host):
    publish(redis, [D1])
    report = converge(HOST, REF)
    [row] = report["containers"]
    assert (row["container_name"], row["state"]) == ("web", "unchanged")
    assert row["reason"] == f"already runs {D1}"


@pytest.mark.parametrize(
    "why",
    ["behind", "old inventory", "update cut short"],
)
def test_any_doubt_asks_podman(redis, host, why):
    publish(
        redis,
        [D2] if why == "behind" else [D1],
        collected_at=time.time() - 3600 if why == "old inventory" else None,
    )
    if why == "update cut short":
        RedisAttemptJournal(redis, HOST).record(
            Attempt(
                unit="container-web.service",
                job="converge-x",
                phase="restarting",
                containers=[
                    {
                        "name": "web",
                        "id": "c1",
                        "image": REF,
                        "policy": "registry",
                        "old": "9" * 64,
                        "new": "8" * 64,
                    }
                ],
            )
        )
    with pytest.raises(TransientUpdateError, match="absent.sock|listing containers"):
        converge(HOST, REF)
