"""Hostile input at the edge: secrets in encoded URLs, unusable delivery ids, a Redis that hangs,
deliveries with thousands of events, and escape characters bound for the log."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.app.served import Served, podhook_serve, raw_request
from tests.app.test_sources_over_http import CASES, SECRET, signed
from tests.app.test_webhook_app import DISTRIBUTION_TYPE, envelope, manifest_push
from tests.conftest import start_redis
from webhook.app import create_app
from workers import audit
from workers.hosts import register_host

TOKEN = "edge-token-7Qm2v"
URL_SECRET = "edge-url-secret-K8p4x"
HUB_BODY = (Path(__file__).parent.parent / "payloads/dockerhub/dockerhub.json").read_bytes()
CONFIG = f"""
[endpoints.hub]
source = "dockerhub"
secret = "{URL_SECRET}"
"""


def encoded_anyhow(secret: str) -> re.Pattern[str]:
    """The secret with any of its characters percent-encoded (any case), or none."""
    return re.compile("".join(f"(?:{re.escape(c)}|%{ord(c):02x})" for c in secret), re.IGNORECASE)


def post(served: Served, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        connection.putrequest("POST", target, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": "podhook", **headers}.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        raw = response.read()
        assert TOKEN not in raw.decode(errors="replace")
        assert not encoded_anyhow(URL_SECRET).search(raw.decode(errors="replace"))
        location = response.getheader("Location") or ""
        assert not encoded_anyhow(URL_SECRET).search(location), location
        return response.status, (json.loads(raw) if raw.startswith(b"{") else {})
    finally:
        connection.close()


def every_encoding(secret: str) -> list[str]:
    """The secret raw, wholly percent-encoded in both cases, and with one character encoded."""
    whole = "".join(f"%{ord(c):02X}" for c in secret)
    return [secret, whole, whole.lower(), secret[:3] + f"%{ord(secret[3]):02x}" + secret[4:]]


@pytest.fixture(params=["text", "json"])
def served(request, tmp_path, redis_url, redis) -> Iterator[Served]:
    register_host(redis, "host-a")
    env = {
        "PODHOOK_REDIS_URL": redis_url,
        "PODHOOK_WEBHOOK_TOKEN": TOKEN,
        "PODHOOK_LOG_FORMAT": request.param,
    }
    with podhook_serve(tmp_path / "serve", env, CONFIG) as server:
        yield server


def test_no_secret_reaches_a_log_a_redirect_or_an_answer_however_the_url_is_encoded(served):
    accepted, refused = [], []
    hub = {"Content-Type": "application/json"}
    for form in every_encoding(URL_SECRET):
        targets = [
            f"/v1/webhooks/hub/{form}",
            f"/v1/webhooks/hub%2F{form}",
            f"/v1/webhooks/hub%2f{form}",
            f"/v1%2Fwebhooks/hub/{form}",
            f"/v1/%77ebhooks/hub/{form}",
            f"//v1/webhooks/hub/{form}",
            f"/v1//webhooks//hub//{form}",
            f"/v1/webhooks/hub?token={form}",
            f"/v1/webhooks/hub?%74oken={form}",
            f"/v1/webhooks/hub?%54%4F%4B%45%4E={form}",
            f"/v1/webhooks/hub?x=1&token={form}&y=2",
            f"/v1/webhooks/hub/{quote(form, safe='')}",  # encoded twice
            f"/v1/webhooks/nosuch/{form}",
            f"/V1/WEBHOOKS/hub/{form}",
        ]
        for target in targets:
            status, _ = post(served, target, HUB_BODY, hub)
            assert status < 500, target
            (accepted if status < 300 else refused).append(target)
        for header in (f"Bearer {form}", form):
            status, _ = post(
                served,
                "/v1/webhooks/distribution",
                envelope(manifest_push()),
                {"Content-Type": DISTRIBUTION_TYPE, "Authorization": header.replace(form, TOKEN)},
            )
            assert status == 202
    # Some of these forms reach the endpoint (that is how they leaked); none leaks.
    assert accepted and refused
    output = served.output()
    assert "/v1/webhooks/hub/***" in output
    for secret in (URL_SECRET, TOKEN):
        found = encoded_anyhow(secret).search(output)
        assert found is None, output[max(0, found.start() - 200) : found.end() + 50]


def test_a_path_with_doubled_slashes_is_not_redirected(served):
    # A redirect would repeat the secret in its Location (post() checks that no header does).
    for target in (f"//v1/webhooks/hub/{URL_SECRET}", f"/v1//webhooks/hub//{URL_SECRET}"):
        status, body = post(served, target, HUB_BODY, {})
        assert not 300 <= status < 400, (target, status)
        assert body["status"] == status if "status" in body else status < 300


def test_malformed_framing_and_escape_characters_do_not_reach_the_log_raw(served, redis):
    hostile = (
        b"POST /v1/webhooks/hub/" + URL_SECRET.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    )
    assert raw_request(served, hostile, shutdown=True)[0] == 400
    body = json.loads(CASES["distribution"][0])
    body["events"][0]["id"] = "id\x1b[2J\r\nINFO forged line"
    status, _ = post(
        served,
        "/v1/webhooks/distribution",
        json.dumps(body).encode(),
        {"Content-Type": DISTRIBUTION_TYPE, "Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 202
    output = served.output()
    assert "\x1b" not in output and "forged line" not in output
    assert not encoded_anyhow(URL_SECRET).search(output)


def test_a_redis_that_hangs_gets_503_and_refusals_do_not_wait_on_it(tmp_path):
    own = start_redis(tmp_path / "redis")
    try:
        from redis import Redis

        register_host(Redis.from_url(own.url), "host-a")
        env = {"PODHOOK_REDIS_URL": own.url, "PODHOOK_WEBHOOK_TOKEN": TOKEN}
        with podhook_serve(tmp_path / "serve", env, CONFIG) as served:
            headers = {"Content-Type": DISTRIBUTION_TYPE, "Authorization": f"Bearer {TOKEN}"}
            body = envelope(manifest_push())
            os.kill(own.process.pid, signal.SIGSTOP)
            try:
                status, answer = post(served, "/v1/webhooks/distribution", body, headers)
                assert status == 503 and answer["status"] == 503, answer
                wrong = {**headers, "Authorization": "Bearer wrong"}
                assert post(served, "/v1/webhooks/distribution", body, wrong)[0] == 401
                assert post(served, "/v1/webhooks/nosuch", body, headers)[0] == 404
            finally:
                os.kill(own.process.pid, signal.SIGCONT)
            assert post(served, "/v1/webhooks/distribution", body, headers)[0] == 202
    finally:
        own.stop()


@pytest.fixture
def app(redis_url, redis):
    register_host(redis, "host-a")
    endpoints = {
        name: {"source": name, "secret": SECRET}
        | ({"registry": "zot.example.com"} if name in ("zot", "artifactory", "nexus") else {})
        for name in CASES
    }
    return create_app(redis_url=redis_url, webhook_token=None, endpoints=endpoints)


def _set_ids(value, to):
    """Every delivery-id-like field of a JSON value set to ``to``."""
    if isinstance(value, dict):
        return {
            k: (to if k in ("id", "messageId", "message_id") else _set_ids(v, to))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_set_ids(v, to) for v in value]
    return value


@pytest.mark.parametrize("source", sorted(CASES))
@pytest.mark.parametrize("bad_id", ["\ud800", "\udfff-x", "a\x00b", "\x1b[31m", "x" * 5000])
def test_an_unusable_delivery_id_is_ignored_and_the_push_still_queued(app, redis, source, bad_id):
    body, headers, suffix, reference = CASES[source]
    body = json.dumps(_set_ids(json.loads(body), bad_id)).encode()
    response = app.test_client().post(
        f"/v1/webhooks/{source}{suffix}",
        data=body,
        headers={"Content-Type": "application/json", **signed(source, body, headers)},
    )
    assert response.status_code == 202, response.json
    assert len(response.json["queued"]) == 1
    assert not any(b"\x1b" in key or b"\x00" in key for key in redis.keys("*"))


def test_a_delivery_with_too_many_events_is_refused_whole(app, redis):
    tags = [f"v{n}" for n in range(10_000)]
    body = json.dumps(
        {"repository": "team/app", "docker_url": "quay.io/team/app", "updated_tags": tags}
    ).encode()
    response = app.test_client().post(f"/v1/webhooks/quay?token={SECRET}", data=body)
    assert response.status_code == 413 and response.is_json
    assert response.json["limit"] == 100 and response.json["events"] == 10_000
    assert "at most 100" in response.json["error"]
    assert redis.keys("rq:job:*") == [] and audit.read(redis) == []


def test_a_delivery_at_the_limit_is_queued_whole(redis_url, redis):
    register_host(redis, "host-a")
    app = create_app(redis_url=redis_url, webhook_token=TOKEN, max_delivery_events=300)
    tags = [f"v{n}" for n in range(300)]
    body = json.dumps(
        {"repository": "team/app", "docker_url": "quay.io/team/app", "updated_tags": tags}
    ).encode()
    response = app.test_client().post(f"/v1/webhooks/quay?token={TOKEN}", data=body)
    assert response.status_code == 202 and len(response.json["queued"]) == 300
    [entry] = audit.read(redis, kind="delivery")
    assert len(entry.data["jobs"]) == 300
