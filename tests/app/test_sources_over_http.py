"""Every source through the one webhook route on a real Redis: its own authentication decides,
a push is queued, and a delivery without or with wrong credentials queues nothing."""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import pytest

from tests.unit.test_source_github import tagged as github_tagged
from webhook.app import create_app
from workers.hosts import register_host
from workers.queueing import get_queue

PAYLOADS = Path(__file__).parent.parent / "payloads"
SECRET = "per-endpoint-secret-31f"


def sample(source: str, name: str) -> bytes:
    return (PAYLOADS / source / name).read_bytes()


def artifactory_body() -> bytes:
    # The published sample is the bare `data` object; deliveries wrap it (JFrog "Webhooks").
    data = json.loads(sample("artifactory", "artifactory-docker-pushed.json"))
    return json.dumps({"domain": "docker", "event_type": "pushed", "data": data}).encode()


def hmac_hex(body: bytes, digestmod: str = "sha256") -> str:
    return hmac.new(SECRET.encode(), body, digestmod).hexdigest()


# source: (body, headers when authenticated, URL suffix when authenticated, queued reference)
CASES = {
    "distribution": (
        sample("distribution", "recorded-manifest-push.json"),
        {"Authorization": f"Bearer {SECRET}"},
        "",
        "127.0.0.1:54415/team/app:1.2",
    ),
    "harbor": (
        sample("harbor", "harbor-push-artifact-tagged.json"),
        {"Authorization": SECRET},
        "",
        "hub.harbor.com/test-webhook/debian:latest",
    ),
    "dockerhub": (
        sample("dockerhub", "dockerhub.json"),
        {},
        f"/{SECRET}",
        "docker.io/svendowideit/testhook:latest",
    ),
    "quay": (
        sample("quay", "quay-repo-push.json"),
        {},
        f"?token={SECRET}",
        "quay.io/dgangaia/test:latest",
    ),
    "github": (
        json.dumps(github_tagged()).encode(),
        {"X-GitHub-Event": "registry_package", "X-GitHub-Delivery": "d-1"},
        "",
        "ghcr.io/codertocat/hello-world:latest",
    ),
    "gitea": (
        sample("gitea", "gitea-package-created.json"),
        {"X-Gitea-Event": "package", "X-Gitea-Delivery": "g-1"},
        "",
        "git.example.com/acme/webapp:1.4.2",
    ),
    "acr": (
        sample("acr", "acr-push.json"),
        {"Authorization": f"Bearer {SECRET}"},
        "",
        "myregistry.azurecr.io/hello-world:v1",
    ),
    "ecr": (
        sample("ecr", "ecr-eventbridge-push.json"),
        {"Authorization": SECRET},
        "",
        "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-repository-name:latest",
    ),
    "gar": (
        sample("gar", "gcr-pubsub-push-envelope-flux-recv.fixed.json"),
        {},
        f"/{SECRET}",
        "us.gcr.io/am/am.kebab.api:test",
    ),
    "zot": (
        sample("zot", "zot-image-updated-data.json"),
        {
            "Authorization": f"Bearer {SECRET}",
            "ce-type": "zotregistry.image.updated",
            "ce-id": "z-1",
            "ce-source": "zot",
            "ce-specversion": "1.0",
        },
        "",
        "zot.example.com/space/my-image:latest",
    ),
    "artifactory": (
        artifactory_body(),
        {"X-JFrog-Event-Auth": SECRET},
        "",
        "zot.example.com/library/ubuntu:latest",
    ),
    "nexus": (
        sample("nexus", "nexus-component-created-flux-recv.json"),
        {},
        "",
        "zot.example.com/app1/alpine:3.4",
    ),
    "generic": (
        sample("generic", "generic-ci.json"),
        {"Authorization": f"Bearer {SECRET}"},
        "",
        "registry.example.com:5000/team/api:2.3.1",
    ),
}


def signed(source: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    headers = dict(headers)
    if source == "github":
        headers["X-Hub-Signature-256"] = "sha256=" + hmac_hex(body)
    elif source == "gitea":
        headers["X-Gitea-Signature"] = hmac_hex(body)
    elif source == "nexus":
        headers["X-Nexus-Webhook-Signature"] = hmac_hex(body, "sha1")
    return headers


@pytest.fixture
def client(redis_url, redis):
    register_host(redis, "host-a")
    endpoints = {
        name: {"source": name, "secret": SECRET}
        | ({"registry": "zot.example.com"} if name in ("zot", "artifactory", "nexus") else {})
        for name in CASES
    }
    return create_app(redis_url=redis_url, webhook_token=None, endpoints=endpoints).test_client()


def test_every_source_is_covered():
    from webhook.sources import source_names

    assert sorted(CASES) == source_names()


@pytest.mark.parametrize("source", sorted(CASES))
def test_authenticated_push_is_queued(client, redis, source):
    body, headers, suffix, reference = CASES[source]
    response = client.post(
        f"/v1/webhooks/{source}{suffix}",
        data=body,
        headers={"Content-Type": "application/json", **signed(source, body, headers)},
    )
    assert response.status_code == 202, response.json
    [job_id] = response.json["queued"]
    event = get_queue(redis, "host-a").fetch_job(job_id).meta["event"]
    assert f"{event['registry']}/{event['repository']}:{event['tag']}" == reference


@pytest.mark.parametrize("source", sorted(CASES))
@pytest.mark.parametrize("how", ["missing", "wrong", "tampered"])
def test_unauthenticated_delivery_is_401_and_queues_nothing(client, redis, source, how):
    body, headers, suffix, _reference = CASES[source]
    headers = signed(source, body, headers)
    if how == "missing":
        headers = {
            k: v
            for k, v in headers.items()
            if k not in ("Authorization", "X-JFrog-Event-Auth") and "Signature" not in k
        }
        suffix = ""
    elif how == "wrong":
        headers = {
            k: (
                v.replace(SECRET, "not-it")
                if SECRET in v
                else (
                    "sha256=" + "0" * 64
                    if v.startswith("sha256=")
                    else ("0" * len(v) if "Signature" in k else v)
                )
            )
            for k, v in headers.items()
        }
        suffix = suffix.replace(SECRET, "not-it")
    else:
        body = body.replace(b"}", b' , "x": 1}', 1) if body.startswith(b"{") else body + b" "
    response = client.post(
        f"/v1/webhooks/{source}{suffix}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    if how == "tampered" and source not in ("github", "gitea", "nexus"):
        assert response.status_code != 401  # only signed bodies notice tampering
        return
    assert response.status_code == 401, response.json
    assert response.json["error"]
    assert redis.keys("rq:job:*") == []


@pytest.mark.parametrize(
    ("source", "header"), [("github", "X-GitHub-Delivery"), ("gitea", "X-Gitea-Delivery")]
)
def test_redelivery_with_the_same_id_queues_nothing(client, redis, source, header):
    body, headers, suffix, _reference = CASES[source]
    headers = {"Content-Type": "application/json", **signed(source, body, headers)}
    first = client.post(f"/v1/webhooks/{source}{suffix}", data=body, headers=headers)
    redis.delete(*redis.keys("rq:job:*"))  # even with the job gone, the delivery id is known
    again = client.post(f"/v1/webhooks/{source}{suffix}", data=body, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert redis.keys("rq:job:*") == []
