"""CNCF distribution envelopes: tagged manifest pushes are events, everything else is ignored."""

from __future__ import annotations

import json

import pytest

from tests.unit.sources_support import (
    Samples,
    assert_no_secret_refuses_unless_insecure,
    assert_refused,
    make_delivery,
    tuples,
)
from webhook.endpoints import Endpoint
from webhook.sources import PayloadError, get_source

SOURCE = get_source("distribution")
SAMPLES = Samples("distribution")
DIGEST = "sha256:" + "4f" * 32
RECORDED = "sha256:fad9d07d124f8b62b97753c481a3da89710d69e6a4359b21a9da5ded5c103f5d"


def parse(body: bytes | dict) -> object:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SOURCE.parse({}, data)


def event(action="push", media_type="application/vnd.oci.image.manifest.v1+json", tag="1", **kw):
    target = {"mediaType": media_type, "repository": "team/app", "digest": DIGEST, **kw}
    if tag is not None:
        target["tag"] = tag
    return {"id": "e1", "action": action, "target": target, "request": {"host": "reg.example.com"}}


@pytest.mark.parametrize(
    ("name", "expected", "ignored"),
    [
        ("distribution-push.json", [], 3),  # untagged manifest push and two blobs
        ("distribution-pull.json", [], 1),
        ("distribution-event-test-envelope.json", [], 3),
        ("recorded-manifest-push.json", [("127.0.0.1:54415", "team/app", "1.2", RECORDED)], 0),
        ("recorded-blob-push.json", [], 1),
        ("recorded-manifest-pull.json", [], 1),
    ],
)
def test_samples(name, expected, ignored):
    result = parse(SAMPLES.read(name))
    assert tuples(result) == expected and result.ignored == ignored


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ],
)
def test_every_manifest_and_index_type_is_a_push(media_type):
    result = parse({"events": [event(media_type=media_type)]})
    assert tuples(result) == [("reg.example.com", "team/app", "1", DIGEST)]


@pytest.mark.parametrize(
    "ignored_event",
    [
        event(action="pull"),
        event(action="delete"),
        event(action="mount"),
        event(tag=None),
        event(tag=""),
        event(media_type="application/octet-stream", url="https://r/v2/team/app/blobs/x"),
    ],
)
def test_what_is_not_a_tagged_manifest_push_is_ignored(ignored_event):
    result = parse({"events": [ignored_event]})
    assert result.events == [] and result.ignored == 1


def test_host_falls_back_to_the_target_url_and_docker_hub_is_normalized():
    no_host = event(url="https://registry-1.docker.io/v2/library/nginx/manifests/1")
    del no_host["request"]
    no_host["target"]["repository"] = "library/nginx"
    assert tuples(parse({"events": [no_host]})) == [("docker.io", "library/nginx", "1", DIGEST)]


def test_manifest_without_media_type_is_known_by_its_url():
    bare = event(media_type=None, url="http://reg.example.com/v2/team/app/manifests/1")
    del bare["target"]["mediaType"]
    assert len(parse({"events": [bare]}).events) == 1


def test_malformed_digest_is_dropped_not_refused():
    result = parse({"events": [event(digest="sha256:0123456789abcdef0")]})
    assert tuples(result) == [("reg.example.com", "team/app", "1", None)]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{", "not valid JSON"),
        ({"nope": []}, "'events'"),
        ({"events": "x"}, "'events' must be a list"),
        ({"events": [1]}, "events[0] must be an object"),
        ({"events": [{"target": {}}]}, "events[0].action"),
        ({"events": [{"action": "push"}]}, "events[0].target"),
        ({"events": [event(repository="")]}, "events[0].target.repository"),
        ({"events": [event(repository="Team/App")]}, "events[0]"),
    ],
)
def test_malformed_envelopes_name_the_field(body, named):
    with pytest.raises(PayloadError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse(body)


def test_bearer_token_authentication():
    endpoint = Endpoint(name="distribution", source="distribution", secret="tok")
    body = json.dumps({"events": [event()]}).encode()
    SOURCE.authenticate(make_delivery(body, {"Authorization": "Bearer tok"}), endpoint)
    assert_refused(SOURCE, make_delivery(body, {"Authorization": "Bearer nope"}), endpoint, "wrong")
    assert_refused(SOURCE, make_delivery(body), endpoint, "missing Authorization")
    assert_no_secret_refuses_unless_insecure(SOURCE, make_delivery(body))
