"""Round trips to Redis per delivery, counted on a real Redis: what the webhook route sends
for a new push, a push that joins a waiting job, a delivery seen before and an ignored one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.connection import AbstractConnection

from tests.app.test_metrics import ACR_PUSH
from tests.app.test_webhook_app import TOKEN, blob_push, envelope, manifest_push, post
from webhook.app import create_app
from workers.hosts import register_host
from workers.queueing import get_queue


def resp_command_names(packed: bytes) -> list[str]:
    """The command names in a buffer of RESP arrays, as redis-py sends them."""
    names, pos = [], 0
    while pos < len(packed):
        end = packed.index(b"\r\n", pos)
        count = int(packed[pos + 1 : end])
        pos = end + 2
        for i in range(count):
            end = packed.index(b"\r\n", pos)
            size = int(packed[pos + 1 : end])
            if i == 0:
                names.append(packed[end + 2 : end + 2 + size].decode().upper())
            pos = end + 2 + size + 2
    return names


@pytest.fixture
def trips(monkeypatch) -> Iterator[list[list[str]]]:
    """Each socket write of redis-py (one round trip: a command, or a pipeline sent at once),
    as the names of the commands it carries."""
    sent: list[list[str]] = []
    original = AbstractConnection.send_packed_command

    def send(self, command, check_health=True):
        chunks = [command] if isinstance(command, (bytes, str)) else command
        packed = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        sent.append(resp_command_names(packed))
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    yield sent


@pytest.fixture
def client(redis_url, redis):
    register_host(redis, "host-a")
    app = create_app(redis_url=redis_url, webhook_token=TOKEN)
    client = app.test_client()
    # Connections opened, scripts loaded, RQ's one INFO: what the first delivery pays once.
    digest = "sha256:" + "0" * 64
    assert post(client, envelope(manifest_push(tag="warm-up", digest=digest))).status_code == 202
    # The metrics client's connection (deliveries refused before Redis is asked are counted).
    assert post(client, envelope(manifest_push()), token="wrong").status_code == 401
    return client


def test_a_new_push_takes_three_round_trips(client, redis, trips):
    response = post(client, envelope(manifest_push()))
    assert response.status_code == 202 and response.json["duplicates"] == 0
    # Route, record and decide; queue the job; the audit entry and the counts.
    assert trips == [
        ["EVALSHA"],
        ["EVALSHA"],
        ["MULTI", "XADD", "XTRIM", "HINCRBY", "HINCRBY", "HINCRBY", "EXEC"],
    ]
    assert len(get_queue(redis, "host-a")) == 2


def test_a_push_that_joins_a_waiting_job_takes_two(client, redis, trips):
    first = post(client, envelope(manifest_push()))
    trips.clear()
    again = post(client, envelope(manifest_push(), blob_push()))
    assert again.status_code == 202 and again.json["queued"] == first.json["queued"]
    assert [names[0] for names in trips] == ["EVALSHA", "MULTI"]


def test_a_delivery_seen_before_takes_one_and_its_count(client, trips):
    acr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert client.post("/v1/webhooks/acr", data=ACR_PUSH, headers=acr).status_code == 202
    # A delivery id to remember: it goes with the audit entry.
    assert "SET" in trips[-1]
    trips.clear()
    again = client.post("/v1/webhooks/acr", data=ACR_PUSH, headers=acr)
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert [names[0] for names in trips] == ["EVALSHA", "MULTI"]


def test_a_delivery_without_pushes_or_id_takes_only_its_count(client, trips):
    response = post(client, envelope(blob_push()))
    assert response.status_code == 200
    assert trips == [["MULTI", "HINCRBY", "HINCRBY", "EXEC"]]


def test_a_redis_that_lost_its_scripts_gets_them_whole_once(client, redis, trips):
    redis.script_flush()  # as a restarted Redis
    trips.clear()
    assert post(client, envelope(manifest_push())).status_code == 202
    assert [names[0] for names in trips] == ["EVALSHA", "EVAL", "EVALSHA", "EVAL", "MULTI"]
    trips.clear()
    assert post(client, envelope(manifest_push(tag="next"))).status_code == 202
    assert [names[0] for names in trips] == ["EVALSHA", "EVALSHA", "MULTI"]


def test_a_script_that_fails_in_redis_is_a_503(client, redis):
    redis.delete("podhook:inventory-at")
    redis.set("podhook:inventory-at", "not a sorted set")  # the script's ZRANGEBYSCORE fails
    response = post(client, envelope(manifest_push()))
    assert response.status_code == 503 and response.is_json
    assert response.json["error"] == "job queue unavailable; retry later"
    assert len(get_queue(redis, "host-a")) == 1  # the warm-up's job only
