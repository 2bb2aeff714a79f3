"""The admin API's rollouts and approvals on a real Redis."""

from __future__ import annotations

import re
from typing import Any

import pytest

from webhook.app import create_app
from workers.approvals import request_approval
from workers.hosts import register_host
from workers.queueing import work_key
from workers.rollout_policy import parse_policies
from workers.rollouts import start_rollout
from workers.settings import load_settings

ADMIN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
REF = "registry.example/shop/web:1"
DIGEST = "sha256:" + "4" * 64


@pytest.fixture
def client(redis_url: str) -> Any:
    return create_app(redis_url=redis_url, admin_token=ADMIN, host_id="host-a").test_client()


@pytest.fixture
def rollout(redis):
    register_host(redis, "canary-1", labels={"ring": "canary"})
    register_host(redis, "web-1", labels={})
    [policy] = parse_policies(
        [{"soak": 600, "waves": [{"name": "canary", "hosts": "ring=canary"}, {"name": "rest"}]}]
    )
    return start_rollout(redis, load_settings({}), policy, REF, DIGEST, 1_900_000_000.0)


def test_rollouts_are_listed_shown_and_controlled(client, rollout):
    listed = client.get("/v1/rollouts", headers=AUTH).get_json()
    assert [r["id"] for r in listed] == [rollout.id]
    shown = client.get(f"/v1/rollouts/{rollout.id}", headers=AUTH).get_json()
    assert shown["waves"][0]["hosts"]["canary-1"]["state"] == "updating"
    paused = client.post(f"/v1/rollouts/{rollout.id}/pause", headers=AUTH)
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    again = client.post(f"/v1/rollouts/{rollout.id}/pause", headers=AUTH)
    assert again.status_code == 409 and "not rolling" in again.get_json()["error"]
    assert client.post(f"/v1/rollouts/{rollout.id}/explode", headers=AUTH).status_code == 404
    assert client.get("/v1/rollouts/20990101-000000-abcdef", headers=AUTH).status_code == 404
    assert client.post("/v1/rollouts/nope/abort", headers=AUTH).status_code == 404


def test_an_approval_lets_the_waiting_hosts_converge(client, redis):
    assert client.post("/v1/approvals", json={"reference": REF}, headers=AUTH).status_code == 404
    request_approval(redis, "web-1", REF, DIGEST, ["web"], 1.0)
    assert client.get("/v1/approvals", headers=AUTH).get_json()[0]["host"] == "web-1"
    response = client.post("/v1/approvals", json={"reference": REF}, headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["approved"] == [{"host": "web-1", "digest": DIGEST}]
    assert redis.exists(work_key("web-1", REF))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "reference: required"),
        ({"reference": REF, "digest": "latest"}, "digest: expected sha256"),
        ({"reference": REF, "when": "now"}, "when: unknown field"),
        ([], "body: expected a JSON object"),
    ],
)
def test_a_bad_approval_is_a_400_naming_the_field(client, body, message):
    response = client.post("/v1/approvals", json=body, headers=AUTH)
    assert response.status_code == 400 and message in response.get_json()["error"]


def _form_token(client: Any) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    return found.group(1) if found else ""


def test_the_page_shows_rollouts_and_approvals_and_acts_on_them(client, redis, rollout):
    client.post("/login", data={"token": ADMIN, "csrf": _form_token(client)})
    request_approval(redis, "web-1", REF, DIGEST, ["web"], 1.0)
    page = client.get("/").text
    assert f'id="rollout-{rollout.id}"' in page and "canary-1" in page
    assert "Waiting for an approval" in page and "Approve</button>" in page
    token = _form_token(client)
    paused = client.post(
        "/rollouts", data={"csrf": token, "rollout": rollout.id, "action": "pause"}
    )
    assert paused.status_code == 303
    assert "paused by the operator" in client.get("/").text
    forged = client.post("/rollouts", data={"csrf": "x", "rollout": rollout.id, "action": "abort"})
    assert forged.status_code == 403
    approved = client.post(
        "/approve", data={"csrf": token, "reference": REF, "digest": DIGEST, "host": "web-1"}
    )
    assert approved.status_code == 303 and redis.exists(work_key("web-1", REF))
