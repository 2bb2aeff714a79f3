"""Tests for the generic adapter: the CI notice and Diun's webhook notifier body."""

from __future__ import annotations

import json

import pytest
from werkzeug.datastructures import Headers

from tests.unit.sources_support import (
    Samples,
    assert_no_secret_refuses_unless_insecure,
    assert_refused,
    make_delivery,
    tuples,
)
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import PayloadError, get_source
from webhook.sources.generic import SOURCE, parse

SAMPLES = Samples("generic")
DIUN_DIGEST = "sha256:216e3ae7de4ca8b553eb11ef7abda00651e79e537e85c46108284e5e91673e01"
CI_DIGEST = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def notice(**fields) -> bytes:
    return json.dumps(fields).encode()


def diun(**changes) -> bytes:
    payload = SAMPLES.json("diun-webhook-doc.json")
    payload.update(changes)
    return json.dumps(payload).encode()


def test_registered_with_bearer_token():
    assert get_source("generic") is SOURCE
    assert SOURCE.needs_registry is False


def test_diun_doc_sample():
    result = parse(Headers(), SAMPLES.read("diun-webhook-doc.json"))
    assert tuples(result) == [("docker.io", "crazymax/diun", "latest", DIUN_DIGEST)]
    assert result.ignored == 0
    assert result.events[0].source == "generic"


def test_diun_update_is_a_push():
    result = parse(Headers(), diun(status="update", image="ghcr.io/crazy-max/diun:4.28"))
    assert tuples(result) == [("ghcr.io", "crazy-max/diun", "4.28", DIUN_DIGEST)]


@pytest.mark.parametrize("status", ["unchange", "skip", "error", "", None])
def test_other_diun_statuses_are_ignored(status):
    result = parse(Headers(), diun(status=status))
    assert (result.events, result.ignored) == ([], 1)


def test_ci_notice_with_digest_and_registry_port():
    result = parse(Headers(), SAMPLES.read("generic-ci.json"))
    assert tuples(result) == [("registry.example.com:5000", "team/api", "2.3.1", CI_DIGEST)]


def test_ci_notice_without_digest():
    result = parse(Headers(), SAMPLES.read("generic-ci-no-digest.json"))
    assert tuples(result) == [("ghcr.io", "acme/worker", "main", None)]


def test_docker_hub_names_are_normalized():
    result = parse(Headers(), notice(image="index.docker.io/nginx:1.27"))
    assert tuples(result) == [("docker.io", "library/nginx", "1.27", None)]


def test_missing_tag_means_latest():
    assert parse(Headers(), notice(image="ghcr.io/acme/worker")).events[0].tag == "latest"


def test_tag_and_digest_in_the_reference():
    result = parse(Headers(), notice(image=f"ghcr.io/acme/worker:main@{CI_DIGEST}"))
    assert tuples(result) == [("ghcr.io", "acme/worker", "main", CI_DIGEST)]
    same = notice(image=f"ghcr.io/acme/worker:main@{CI_DIGEST}", digest=CI_DIGEST)
    assert tuples(parse(Headers(), same)) == tuples(result)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": "nginx:1.27"}, "names no registry host"),
        ({"image": "acme/worker:main"}, "names no registry host"),
        ({"image": f"ghcr.io/acme/worker@{CI_DIGEST}"}, "pinned by digest only"),
        ({"image": "ghcr.io/Acme/Worker:main"}, "'image'"),
        ({"image": "https://ghcr.io/acme/worker:main"}, "'image'"),
        ({"image": ""}, "'image'"),
        ({"image": 42}, "'image'"),
        ({}, "'image'"),
        ({"image": "ghcr.io/acme/worker:main", "digest": "sha256:abc"}, "'digest'"),
        ({"image": "ghcr.io/acme/worker:main", "digest": 7}, "'digest'"),
        (
            {"image": f"ghcr.io/acme/worker:main@{CI_DIGEST}", "digest": DIUN_DIGEST},
            "differs",
        ),
    ],
)
def test_malformed_notices_name_the_field(fields, message):
    with pytest.raises(PayloadError, match=message):
        parse(Headers(), notice(**fields))


def test_malformed_diun_body_names_the_field():
    payload = SAMPLES.json("diun-webhook-doc.json")
    del payload["image"]
    with pytest.raises(PayloadError, match="'image'"):
        parse(Headers(), json.dumps(payload).encode())


@pytest.mark.parametrize("body", [b"", b"image=ghcr.io/a/b:1", b'["ghcr.io/a/b:1"]'])
def test_non_object_bodies_are_refused(body):
    with pytest.raises(PayloadError):
        parse(Headers(), body)


# Authentication: Authorization: Bearer <secret> (Diun: notif.webhook.headers.authorization).

ENDPOINT = Endpoint(name="generic", source="generic", secret="ci-token-0f3a")


def delivery(headers: dict[str, str]) -> Delivery:
    return make_delivery(SAMPLES.read("generic-ci.json"), headers)


def test_right_token_passes():
    SOURCE.authenticate(delivery({"Authorization": "Bearer ci-token-0f3a"}), ENDPOINT)


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer ci-token"}, {"Authorization": "Basic Y2k6dG9rZW4="}, {}],
)
def test_wrong_or_missing_token_is_refused(headers):
    assert_refused(SOURCE, delivery(headers), ENDPOINT)


def test_secret_in_the_url_is_not_accepted():
    url_only = make_delivery(b"{}", query={"token": "ci-token-0f3a"}, path_secret="ci-token-0f3a")
    assert_refused(SOURCE, url_only, ENDPOINT)


def test_no_secret_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery({}))
