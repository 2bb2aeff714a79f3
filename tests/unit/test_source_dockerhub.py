"""Tests for the Docker Hub adapter against the Docker docs samples and a multi-arch capture."""

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
from webhook.sources.dockerhub import SOURCE, parse

SAMPLES = Samples("dockerhub")


def test_registered_with_url_secret():
    assert get_source("dockerhub") is SOURCE
    assert SOURCE.needs_registry is False


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dockerhub.json", ("docker.io", "svendowideit/testhook", "latest", None)),
        (
            "dockerhub-legacy-with-images.json",
            ("docker.io", "svendowideit/testhook", "latest", None),
        ),
        (
            "dockerhub-multiarch-hub-feedback-2148.json",
            ("docker.io", "fireflyiii/core", "develop", None),
        ),
    ],
)
def test_samples(name, expected):
    result = parse(Headers(), SAMPLES.read(name))
    assert tuples(result) == [expected]
    assert result.ignored == 0
    assert result.delivery is None
    assert result.events[0].source == "dockerhub"


def test_legacy_image_ids_are_not_taken_for_a_digest():
    # push_data.images holds legacy image ids without "sha256:", and a literal "...".
    result = parse(Headers(), SAMPLES.read("dockerhub-legacy-with-images.json"))
    assert result.events[0].digest is None


def test_official_image_gets_the_library_namespace():
    payload = SAMPLES.json("dockerhub.json")
    payload["repository"]["repo_name"] = "nginx"
    result = parse(Headers(), json.dumps(payload).encode())
    assert tuples(result) == [("docker.io", "library/nginx", "latest", None)]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p["push_data"].pop("tag"), "push_data.tag"),
        (lambda p: p["push_data"].update(tag=""), "push_data.tag"),
        (lambda p: p.pop("push_data"), "push_data"),
        (lambda p: p["repository"].pop("repo_name"), "repository.repo_name"),
        (lambda p: p["repository"].update(repo_name="Sven/Test Hook"), "repository.repo_name"),
    ],
)
def test_malformed_bodies_name_the_field(mutate, field):
    payload = SAMPLES.json("dockerhub.json")
    mutate(payload)
    with pytest.raises(PayloadError, match=field):
        parse(Headers(), json.dumps(payload).encode())


@pytest.mark.parametrize("body", [b"", b"<html>", b"[]"])
def test_non_object_bodies_are_refused(body):
    with pytest.raises(PayloadError):
        parse(Headers(), body)


# Authentication: Docker Hub cannot send a header or a signature, so the secret is in the URL.

ENDPOINT = Endpoint(name="dockerhub", source="dockerhub", secret="k9Xq2-url-secret")


def delivery(path_secret=None, query=None, headers=None) -> Delivery:
    return make_delivery(
        SAMPLES.read("dockerhub.json"), headers, query=query, path_secret=path_secret
    )


def test_right_secret_in_path_or_query_passes():
    SOURCE.authenticate(delivery(path_secret="k9Xq2-url-secret"), ENDPOINT)
    SOURCE.authenticate(delivery(query={"token": "k9Xq2-url-secret"}), ENDPOINT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path_secret": "wrong"},
        {"query": {"token": "wrong"}},
        {},
        {"headers": {"Authorization": "Bearer k9Xq2-url-secret"}},
    ],
)
def test_wrong_or_missing_secret_is_refused(kwargs):
    assert_refused(SOURCE, delivery(**kwargs), ENDPOINT)


def test_no_secret_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
