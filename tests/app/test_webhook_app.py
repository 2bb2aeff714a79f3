"""The HTTP edge against a real Redis: what each kind of input gets, and what it queues."""

from __future__ import annotations

import json
import logging

import pytest
from redis import Redis

from tests.conftest import free_port
from webhook.app import create_app
from webhook.sources import source_names
from workers.hosts import register_host
from workers.queueing import get_queue

TOKEN = "s3cret-token-for-tests"
DIGEST = "sha256:" + "c" * 64
DISTRIBUTION_TYPE = "application/vnd.docker.distribution.events.v1+json"


def envelope(*events: dict) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def manifest_push(tag: str | None = "1.2", digest: str = DIGEST, host: str = "127.0.0.1:5000"):
    target = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": 528,
        "length": 528,
        "repository": "team/app",
        "url": f"http://{host}/v2/team/app/manifests/{digest}",
    }
    if tag is not None:
        target["tag"] = tag
    return {
        "id": "6e5a2b9c-0d7a-4a47-9f3e-0ad1c0b1f3a1",
        "timestamp": "2026-11-29T09:00:00Z",
        "action": "push",
        "target": target,
        "request": {
            "id": "r1",
            "addr": "127.0.0.1:40000",
            "host": host,
            "method": "PUT",
            "useragent": "skopeo/1.9.3",
        },
        "actor": {},
        "source": {"addr": "host:5000", "instanceID": "i1"},
    }


def blob_push():
    event = manifest_push(tag=None)
    event["action"] = "push"
    event["target"]["mediaType"] = "application/octet-stream"
    event["target"]["url"] = "http://127.0.0.1:5000/v2/team/app/blobs/" + DIGEST
    return event


def pull():
    event = manifest_push()
    event["action"] = "pull"
    return event


@pytest.fixture
def app(redis_url):
    return create_app(redis_url=redis_url, webhook_token=TOKEN, host_id="host-a")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def host(redis):
    register_host(redis, "host-a")
    return "host-a"


def post(client, body: bytes, token: str | None = TOKEN, path="/v1/webhooks/distribution", **kw):
    headers = {"Content-Type": DISTRIBUTION_TYPE}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(path, data=body, headers=headers, **kw)


def queued_jobs(redis: Redis) -> list[bytes]:
    return sorted(redis.keys("rq:job:*"))


def test_manifest_push_queues_one_job_on_the_host_queue(client, redis, host):
    response = post(client, envelope(manifest_push(), blob_push(), blob_push()))
    assert response.status_code == 202, response.json
    assert response.json["events"] == 1 and response.json["ignored"] == 2
    [job_id] = response.json["queued"]
    queue = get_queue(redis, host)
    assert queue.get_job_ids() == [job_id]
    job = queue.fetch_job(job_id)
    assert list(job.args) == [host, "127.0.0.1:5000/team/app:1.2"]
    assert job.meta["event"]["digest"] == DIGEST


def test_repeated_delivery_joins_the_waiting_job(client, redis, host):
    first = post(client, envelope(manifest_push()))
    again = post(client, envelope(manifest_push()))
    assert first.status_code == 202 and again.status_code == 202
    assert again.json["queued"] == first.json["queued"] and again.json["duplicates"] == 1
    assert len(get_queue(redis, host)) == 1


def test_every_registered_host_gets_its_own_job(client, redis, host):
    register_host(redis, "host-b")
    response = post(client, envelope(manifest_push()))
    assert response.status_code == 202 and len(response.json["queued"]) == 2
    assert len(get_queue(redis, "host-a")) == 1 and len(get_queue(redis, "host-b")) == 1


def test_registry_alias_renames_the_host(redis_url, redis, host):
    app = create_app(
        redis_url=redis_url,
        webhook_token=TOKEN,
        registry_aliases={"127.0.0.1:5000": "registry.example.com"},
    )
    response = post(app.test_client(), envelope(manifest_push()))
    job = get_queue(redis, host).fetch_job(response.json["queued"][0])
    assert job.args[1] == "registry.example.com/team/app:1.2"


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "missing Authorization header"), ("wrong", "wrong token")],
)
def test_missing_or_wrong_token_is_401_and_queues_nothing(client, redis, host, token, reason):
    response = post(client, envelope(manifest_push()), token=token)
    assert response.status_code == 401
    assert reason in response.json["error"]
    assert queued_jobs(redis) == []


def test_no_token_configured_refuses_unless_insecure(redis_url, redis, host):
    closed = create_app(redis_url=redis_url, webhook_token=None).test_client()
    assert post(closed, envelope(manifest_push()), token=None).status_code == 401
    assert queued_jobs(redis) == []
    open_app = create_app(redis_url=redis_url, webhook_token=None, insecure=True).test_client()
    assert post(open_app, envelope(manifest_push()), token=None).status_code == 202


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json{", "not valid JSON"),
        (b'{"foo": 1}', "'events'"),
        (b'{"events": {}}', "'events' must be a list"),
        (b'{"events": [{"action": "push"}]}', "events[0].target"),
        (b"[1, 2]", "'events'"),
    ],
)
def test_malformed_body_is_400_naming_the_field(client, redis, host, body, named):
    response = post(client, body)
    assert response.status_code == 400
    assert named in response.json["error"]
    assert queued_jobs(redis) == []


def test_one_bad_event_queues_none_of_the_delivery(client, redis, host):
    bad = manifest_push()
    del bad["target"]["repository"]
    response = post(client, envelope(manifest_push(), bad))
    assert response.status_code == 400 and "events[1].target.repository" in response.json["error"]
    assert queued_jobs(redis) == []


def test_body_over_the_limit_is_413(redis_url, redis, host):
    app = create_app(redis_url=redis_url, webhook_token=TOKEN, max_body_bytes=1024)
    response = post(app.test_client(), b" " * 2000 + envelope(manifest_push()))
    assert response.status_code == 413 and response.is_json
    assert queued_jobs(redis) == []


def test_unknown_source_is_404(client, redis, host):
    response = post(client, envelope(manifest_push()), path="/v1/webhooks/nosuch")
    assert response.status_code == 404 and "nosuch" in response.json["error"]
    assert queued_jobs(redis) == []


def test_unreachable_redis_is_503_so_the_registry_retries():
    app = create_app(redis_url=f"redis://127.0.0.1:{free_port()}/0", webhook_token=TOKEN)
    response = post(app.test_client(), envelope(manifest_push()))
    assert response.status_code == 503 and response.is_json
    assert app.test_client().get("/readyz").status_code == 503


def test_no_registered_host_is_503(client, redis):
    response = post(client, envelope(manifest_push()))
    assert response.status_code == 503 and "no worker host" in response.json["error"]
    assert queued_jobs(redis) == []


def test_only_blobs_and_pulls_is_200_with_the_ignored_count(client, redis, host):
    response = post(client, envelope(blob_push(), pull(), manifest_push(tag=None)))
    assert response.status_code == 200
    assert response.json == {"events": 0, "ignored": 3, "queued": [], "duplicates": 0}
    assert queued_jobs(redis) == []


def test_wrong_method_is_json_405(client):
    response = client.get("/v1/webhooks/distribution")
    assert response.status_code == 405 and response.is_json


def test_health_and_readiness(client, redis):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


@pytest.mark.parametrize("source", source_names())
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b"{}",
        b'"text"',
        b'{"events": [null]}',
        b"0",
        b"[" * 100_000,
        b'{"events": [{"action": "push", "target": {"mediaType": ["x"], "tag": "1"}}]}',
        b'{"diun_version": "4", "status": ["new"], "image": "r.example.com/a:1"}',
    ],
)
def test_no_input_gets_a_500(redis_url, redis, host, source, body):
    # No secret anywhere and every endpoint insecure: each body reaches its parser.
    app = create_app(
        redis_url=redis_url,
        webhook_token=None,
        insecure=True,
        endpoints={
            name: {"source": name, "registry": "r.example.com", "insecure": True}
            for name in source_names()
        },
    )
    response = app.test_client().post(
        f"/v1/webhooks/{source}", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code < 500, (source, body, response.json)
    assert response.is_json


def test_logs_carry_neither_secrets_nor_payloads(client, redis, host, caplog):
    caplog.set_level(logging.DEBUG)
    marker = "payload-marker-1234"
    event = manifest_push()
    event["actor"] = {"name": marker}
    post(client, envelope(event))
    post(client, envelope(event), token="wrong-" + TOKEN)
    post(client, b'{"events": [{"action": "push", "x": "' + marker.encode() + b'"}]}')
    text = caplog.text
    assert "delivery endpoint=distribution" in text
    assert TOKEN not in text and marker not in text


def test_cloudevents_validation_handshake_is_answered(client):
    response = client.options(
        "/v1/webhooks/acr", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert client.options("/v1/webhooks/nosuch").status_code == 404


def test_delivery_is_recorded_in_the_audit_trail(client, redis, host):
    from workers import audit

    response = post(client, envelope(manifest_push()))
    [entry] = audit.read(redis, kind="delivery")
    assert entry.data["endpoint"] == "distribution" and entry.data["source"] == "distribution"
    [job] = entry.data["jobs"]
    assert job == {
        "host": host,
        "job": response.json["queued"][0],
        "duplicate": False,
        "reference": "127.0.0.1:5000/team/app:1.2",
        "digest": DIGEST,
    }
    assert entry.data["received_at"] <= entry.data["queued_at"]
    post(client, envelope(blob_push()))
    assert len(audit.read(redis)) == 1  # nothing to tell about ignored-only deliveries
