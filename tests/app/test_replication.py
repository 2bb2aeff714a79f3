"""A delivery is answered 2xx only once a replica holds its jobs (PODHOOK_REDIS_WAIT_REPLICAS),
against the session's Redis and a real redis-server replicating it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from harness import start_redis, wait_for
from redis import Redis

from tests.conftest import free_port
from webhook.app import create_app
from workers.hosts import register_host
from workers.queueing import work_key

TOKEN = "replication-test-token"
DIGEST = "sha256:" + "d" * 64
DISTRIBUTION_TYPE = "application/vnd.docker.distribution.events.v1+json"


def delivery(event_id: str, repository: str) -> bytes:
    return json.dumps(
        {
            "events": [
                {
                    "id": event_id,
                    "timestamp": "2026-11-29T09:00:00Z",
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": DIGEST,
                        "size": 528,
                        "repository": repository,
                        "tag": "1.0",
                        "url": f"http://127.0.0.1:5000/v2/{repository}/manifests/{DIGEST}",
                    },
                    "request": {"id": "r", "addr": "a", "host": "127.0.0.1:5000", "method": "PUT"},
                    "actor": {},
                    "source": {"addr": "registry:5000"},
                }
            ]
        }
    ).encode()


def post(client, body: bytes):
    headers = {"Content-Type": DISTRIBUTION_TYPE, "Authorization": f"Bearer {TOKEN}"}
    return client.post("/v1/webhooks/distribution", data=body, headers=headers)


def replica_online(primary: Redis) -> bool:
    """Whether the primary counts a replica in sync (what WAIT counts on)."""
    info = primary.info("replication")
    return info["connected_slaves"] == 1 and info["slave0"]["state"] == "online"


@pytest.fixture
def client(redis_url, redis):
    register_host(redis, "host-a")
    app = create_app(
        redis_url=redis_url,
        webhook_token=TOKEN,
        redis_wait_replicas=1,
        redis_wait_timeout=1,
    )
    return app.test_client()


@pytest.fixture
def replica(redis_url, redis, tmp_path) -> Iterator[Redis]:
    """A redis-server replicating the session's Redis, in sync before the test starts."""
    server = start_redis(tmp_path / "replica", port=free_port())
    client = Redis(port=server.port)
    primary_port = redis.connection_pool.connection_kwargs["port"]
    client.replicaof("127.0.0.1", primary_port)
    try:
        wait_for(
            lambda: (
                client.info("replication")["master_link_status"] == "up" and replica_online(redis)
            ),
            20,
            "the replica in sync",
        )
        yield client
    finally:
        client.close()
        server.stop()
        # The primary notices the replica is gone at once (its connection closes).
        wait_for(lambda: redis.info("replication")["connected_slaves"] == 0, 20, "replica gone")


def test_without_a_replica_the_delivery_gets_503_and_is_not_remembered(client, redis):
    first = post(client, delivery("delivery-1", "team/app"))
    assert first.status_code == 503, first.json
    assert first.json["error"] == "job queue unavailable; retry later"
    # The sender's retry is queued again (joining the job), not answered "seen before".
    again = post(client, delivery("delivery-1", "team/app"))
    assert again.status_code == 503 and "duplicate" not in again.json
    metrics = client.get("/metrics").text
    assert 'podhook_deliveries_total{outcome="unavailable",source="distribution"} 2.0' in metrics


def test_with_a_replica_the_delivery_is_answered_once_the_replica_holds_its_job(
    client, redis, replica
):
    response = post(client, delivery("delivery-2", "team/web"))
    assert response.status_code == 202, response.json
    [job_id] = response.json["queued"]
    # Read on the replica, right after the answer: WAIT made it hold the job already.
    assert replica.hget(f"rq:job:{job_id}", "status") == b"queued"
    assert replica.exists("podhook:desired:127.0.0.1:5000/team/web:1.0")


def test_a_delivery_refused_for_want_of_a_replica_is_accepted_once_one_is_back(
    client, redis, tmp_path
):
    refused = post(client, delivery("delivery-3", "team/api"))
    assert refused.status_code == 503
    server = start_redis(tmp_path / "late-replica", port=free_port())
    late = Redis(port=server.port)
    try:
        late.replicaof("127.0.0.1", redis.connection_pool.connection_kwargs["port"])
        wait_for(lambda: replica_online(redis), 20, "the replica in sync")
        retried = post(client, delivery("delivery-3", "team/api"))
        assert retried.status_code == 202, retried.json
        # It joined the job the refused delivery had queued.
        queued = redis.hget(work_key("host-a", "127.0.0.1:5000/team/api:1.0"), "job")
        assert retried.json["queued"] == [queued.decode()]
        assert late.exists(f"rq:job:{retried.json['queued'][0]}")
    finally:
        late.close()
        server.stop()
        wait_for(lambda: redis.info("replication")["connected_slaves"] == 0, 20, "replica gone")
