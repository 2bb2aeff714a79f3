"""Tests for the GAR adapter: Pub/Sub push deliveries of Artifact Registry notifications."""

from __future__ import annotations

import base64
import json
from typing import Any

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
from webhook.sources.gar import SOURCE, parse

SAMPLES = Samples("gar")
IMAGE = "us-west1-docker.pkg.dev/my-project/my-repo/hello-world"
FULL_DIGEST = "sha256:" + "6ec128e26cd5" + "0" * 52
PUSHED = ("us-west1-docker.pkg.dev", "my-project/my-repo/hello-world", "1.1")


def envelope(data: bytes, message_id: str = "2070443601311540") -> bytes:
    """A Pub/Sub push request body (cloud.google.com/pubsub/docs/push) carrying ``data``."""
    return json.dumps(
        {
            "message": {
                "attributes": {},
                "data": base64.b64encode(data).decode(),
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": "2021-02-26T19:13:55.749Z",
                "publish_time": "2021-02-26T19:13:55.749Z",
            },
            "subscription": "projects/my-project/subscriptions/podhook",
        }
    ).encode()


def test_tag_insert_in_a_push_envelope_yields_the_image():
    result = parse(Headers(), envelope(SAMPLES.read("gar-pubsub-insert.json")))
    # The doc digest "sha256:6ec128e26cd5..." is truncated: dropped, not refused.
    assert tuples(result) == [(*PUSHED, None)]
    assert result.ignored == 0
    assert result.delivery == "2070443601311540"
    assert result.events[0].delivery == "2070443601311540"
    assert result.events[0].source == "gar"


def test_unwrapped_delivery_reads_the_body_as_data_and_the_id_from_headers():
    headers = Headers({"x-goog-pubsub-message-id": "77"})
    result = parse(headers, SAMPLES.read("gar-pubsub-insert.json"))
    assert tuples(result) == [(*PUSHED, None)]
    assert result.delivery == "77"
    assert parse(Headers(), SAMPLES.read("gar-pubsub-insert.json")).delivery is None


@pytest.mark.parametrize(
    "name", ["gar-pubsub-insert-digest-only.json", "gar-pubsub-delete-tag.json"]
)
@pytest.mark.parametrize("wrapped", [True, False])
def test_digest_only_insert_and_delete_are_ignored(name, wrapped):
    body = envelope(SAMPLES.read(name)) if wrapped else SAMPLES.read(name)
    result = parse(Headers(), body)
    assert (result.events, result.ignored) == ([], 1)


def test_full_digest_of_the_same_image_is_kept():
    data = {"action": "INSERT", "digest": f"{IMAGE}@{FULL_DIGEST}", "tag": f"{IMAGE}:1.1"}
    result = parse(Headers(), envelope(json.dumps(data).encode()))
    assert tuples(result) == [(*PUSHED, FULL_DIGEST)]


def test_digest_of_another_image_is_dropped():
    other = "us-west1-docker.pkg.dev/my-project/my-repo/other"
    data = {"action": "INSERT", "digest": f"{other}@{FULL_DIGEST}", "tag": f"{IMAGE}:1.1"}
    assert tuples(parse(Headers(), envelope(json.dumps(data).encode()))) == [(*PUSHED, None)]


def test_flux_recv_gcr_envelope_fixed_copy_yields_the_tag_only_insert():
    result = parse(Headers(), SAMPLES.read("gcr-pubsub-push-envelope-flux-recv.fixed.json"))
    assert tuples(result) == [("us.gcr.io", "am/am.kebab.api", "test", None)]
    assert result.delivery == "981636256311680"


def test_flux_recv_gcr_envelope_verbatim_is_refused_for_its_extra_brace():
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse(Headers(), SAMPLES.read("gcr-pubsub-push-envelope-flux-recv.verbatim-invalid.jsonc"))


def test_registry_with_a_port_is_kept():
    data = {"action": "INSERT", "tag": "registry.example.com:5000/team/app:2"}
    result = parse(Headers(), envelope(json.dumps(data).encode()))
    assert tuples(result) == [("registry.example.com:5000", "team/app", "2", None)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (json.dumps({"message": {"messageId": "1"}}).encode(), "'message.data'"),
        (json.dumps({"message": {"data": "!!not base64!!"}}).encode(), "'message.data'"),
        (envelope(b"not json"), "'message.data'"),
        (json.dumps({"message": "text"}).encode(), "'message'"),
        (envelope(b'{"tag": "us.gcr.io/a/b:1"}'), "'action'"),
        (envelope(b'["INSERT"]'), "JSON object"),
        (b"[]", "JSON object"),
    ],
)
def test_malformed_bodies_name_the_field(body, field):
    with pytest.raises(PayloadError, match=field):
        parse(Headers(), body)


@pytest.mark.parametrize(
    "tag",
    [
        "hello-world:1.1",  # no registry host
        "us-west1-docker.pkg.dev/my-project/my-repo/hello-world",  # no tag
        "us-west1-docker.pkg.dev/p/r/Hello:1",  # invalid path component
        f"{IMAGE}@{FULL_DIGEST}",  # a digest, not a tag
    ],
)
def test_tag_that_is_not_a_tagged_reference_is_refused(tag):
    data = {"action": "INSERT", "tag": tag}
    with pytest.raises(PayloadError, match="'tag'"):
        parse(Headers(), envelope(json.dumps(data).encode()))


def test_source_is_registered_with_a_host_from_the_payload():
    assert get_source("gar") is SOURCE
    assert SOURCE.needs_registry is False


def delivery(headers: dict[str, str] | None = None, **kwargs: Any) -> Delivery:
    return make_delivery(envelope(SAMPLES.read("gar-pubsub-insert.json")), headers, **kwargs)


ENDPOINT = Endpoint(name="gar", source="gar", secret="s3cret")


@pytest.mark.parametrize(
    "given", [delivery(path_secret="s3cret"), delivery(query={"token": "s3cret"})]
)
def test_secret_in_the_url_passes(given):
    SOURCE.authenticate(given, ENDPOINT)


@pytest.mark.parametrize(
    "given",
    [
        delivery(),
        delivery(path_secret="wrong"),
        delivery(query={"token": "wrong"}),
        # Pub/Sub's own Authorization header is an OIDC JWT, not the shared secret.
        delivery(headers={"Authorization": "Bearer s3cret"}),
    ],
)
def test_wrong_or_missing_url_secret_is_refused(given):
    assert_refused(SOURCE, given, ENDPOINT)


def test_no_secret_configured_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
