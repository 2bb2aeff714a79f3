"""Tests for the Harbor adapter against the Harbor doc samples and a Harbor 1.x capture."""

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
from webhook.sources.harbor import SOURCE, parse

SAMPLES = Samples("harbor")
ALPINE_DIGEST = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"


def test_registered_with_header_token_and_payload_host():
    assert get_source("harbor") is SOURCE
    assert SOURCE.needs_registry is False


def test_tagged_default_push_sample():
    result = parse(Headers(), SAMPLES.read("harbor-push-artifact-tagged.json"))
    assert tuples(result) == [
        (
            "hub.harbor.com",
            "test-webhook/debian",
            "latest",
            "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8",
        )
    ]
    assert result.ignored == 0
    assert result.delivery is None
    assert result.events[0].source == "harbor"


def test_harbor_v1_push_image_capture():
    result = parse(Headers(), SAMPLES.read("harbor-v1-pushImage-flux-recv.json"))
    assert tuples(result) == [
        (
            "demo.goharbor.io",
            "test123/alpine",
            "3.10",
            "sha256:e4355b66995c96b4b468159fc5c7e3540fcef961189ca13fee877798649f531a",
        )
    ]


def test_untagged_default_push_is_ignored():
    # The doc's "Artifact pushed" sample was pushed by digest: its tag is the digest itself.
    result = parse(Headers(), SAMPLES.read("harbor-push-artifact.json"))
    assert result.events == []
    assert result.ignored == 1


def test_untagged_cloudevents_push_is_ignored_and_keeps_the_event_id():
    result = parse(Headers(), SAMPLES.read("harbor-push-artifact-cloudevents.json"))
    assert result.events == []
    assert result.ignored == 1
    assert result.delivery == "66e18103-09c1-41f6-982f-37df223f3eeb"


def test_tagged_cloudevents_push():
    # The CloudEvents doc sample is untagged; tag it the way Harbor does for a push by tag.
    payload = SAMPLES.json("harbor-push-artifact-cloudevents.json")
    payload["data"]["resources"][0]["tag"] = "3.18"
    payload["data"]["resources"][0]["resource_url"] = "localhost/harbor/alpine:3.18"
    result = parse(Headers(), json.dumps(payload).encode())
    assert tuples(result) == [("localhost", "harbor/alpine", "3.18", ALPINE_DIGEST)]
    assert result.delivery == "66e18103-09c1-41f6-982f-37df223f3eeb"
    assert result.events[0].delivery == "66e18103-09c1-41f6-982f-37df223f3eeb"


@pytest.mark.parametrize(
    ("name", "delivery"),
    [
        ("harbor-pull-artifact.json", None),
        ("harbor-pull-artifact-default-format-test.json", None),
        ("harbor-pull-artifact-cloudevents.fixed.json", "718eab63-2efa-4f88-8c27-8bcacc34929b"),
        ("harbor-delete-artifact.json", None),
        ("harbor-delete-artifact-cloudevents.json", "343f1623-7cba-487c-88f1-c5ebf55e93aa"),
        ("harbor-scanning-completed.json", None),
        ("harbor-scanning-completed-cloudevents.json", "64bce2fe-6159-454d-8389-852d01ef1e9d"),
    ],
)
def test_pull_delete_and_scan_samples_are_ignored(name, delivery):
    result = parse(Headers(), SAMPLES.read(name))
    assert result.events == []
    assert result.ignored == 1
    assert result.delivery == delivery


@pytest.mark.parametrize(
    "name",
    [
        "harbor-push-artifact-cloudevents.verbatim-invalid.jsonc",
        "harbor-pull-artifact-cloudevents.verbatim-invalid.jsonc",
    ],
)
def test_verbatim_invalid_doc_samples_are_refused(name):
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse(Headers(), SAMPLES.read(name))


def test_multi_arch_push_keeps_only_the_tagged_resource():
    payload = SAMPLES.json("harbor-push-artifact-tagged.json")
    tagged = payload["event_data"]["resources"][0]
    platform = {
        "digest": ALPINE_DIGEST,
        "tag": ALPINE_DIGEST,
        "resource_url": f"hub.harbor.com/test-webhook/debian@{ALPINE_DIGEST}",
    }
    payload["event_data"]["resources"] = [platform, tagged, {**platform, "tag": ""}]
    result = parse(Headers(), json.dumps(payload).encode())
    assert [e.reference for e in result.events] == ["hub.harbor.com/test-webhook/debian:latest"]
    assert result.ignored == 2


def test_registry_host_keeps_its_port():
    payload = SAMPLES.json("harbor-push-artifact-tagged.json")
    payload["event_data"]["resources"][0]["resource_url"] = (
        "harbor.example.com:8443/test-webhook/debian:latest"
    )
    result = parse(Headers(), json.dumps(payload).encode())
    assert result.events[0].registry == "harbor.example.com:8443"


def test_malformed_digest_is_dropped_not_refused():
    payload = SAMPLES.json("harbor-push-artifact-tagged.json")
    payload["event_data"]["resources"][0]["digest"] = "sha256:abc..."
    result = parse(Headers(), json.dumps(payload).encode())
    assert tuples(result) == [("hub.harbor.com", "test-webhook/debian", "latest", None)]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("type"), "'type'"),
        (lambda p: p["event_data"]["repository"].pop("repo_full_name"), "repo_full_name"),
        (lambda p: p["event_data"].pop("resources"), "event_data.resources"),
        (lambda p: p["event_data"].update(resources=[]), "event_data.resources"),
        (lambda p: p["event_data"]["resources"][0].pop("resource_url"), "resource_url"),
        (lambda p: p["event_data"]["resources"][0].update(resource_url="hub"), "resource_url"),
        (lambda p: p["event_data"]["resources"].__setitem__(0, "x"), "resources[0]"),
        (lambda p: p["event_data"]["resources"][0].update(tag=7), "resources[0].tag"),
    ],
)
def test_malformed_bodies_name_the_field(mutate, field):
    payload = SAMPLES.json("harbor-push-artifact-tagged.json")
    mutate(payload)
    with pytest.raises(PayloadError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse(Headers(), json.dumps(payload).encode())


def test_missing_cloudevents_data_names_the_field():
    payload = SAMPLES.json("harbor-push-artifact-cloudevents.json")
    del payload["data"]
    with pytest.raises(PayloadError, match="'data'"):
        parse(Headers(), json.dumps(payload).encode())


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'"PUSH_ARTIFACT"'])
def test_non_object_bodies_are_refused(body):
    with pytest.raises(PayloadError):
        parse(Headers(), body)


def test_bad_repository_name_is_refused():
    payload = SAMPLES.json("harbor-push-artifact-tagged.json")
    payload["event_data"]["repository"]["repo_full_name"] = "Test Webhook/Debian"
    with pytest.raises(PayloadError, match=r"resources\[0\]"):
        parse(Headers(), json.dumps(payload).encode())


# Authentication: Harbor sends the policy's auth_header verbatim in Authorization.


def delivery(headers: dict[str, str]) -> Delivery:
    return make_delivery(SAMPLES.read("harbor-push-artifact-tagged.json"), headers)


ENDPOINT = Endpoint(name="harbor", source="harbor", secret="s3cret-token")


@pytest.mark.parametrize("value", ["Bearer s3cret-token", "s3cret-token", "bearer s3cret-token"])
def test_right_token_passes(value):
    SOURCE.authenticate(delivery({"Authorization": value}), ENDPOINT)


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong"}, {}, {"X-Other": "s3cret"}])
def test_wrong_or_missing_token_is_refused(headers):
    assert_refused(SOURCE, delivery(headers), ENDPOINT)


def test_configured_header_overrides_authorization():
    endpoint = Endpoint(name="harbor", source="harbor", secret="s3cret-token", header="X-Harbor")
    SOURCE.authenticate(delivery({"X-Harbor": "s3cret-token"}), endpoint)
    assert_refused(SOURCE, delivery({"Authorization": "Bearer s3cret-token"}), endpoint)


def test_no_secret_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery({}))
