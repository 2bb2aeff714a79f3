"""Tests for the Artifactory adapter: predefined webhooks of the docker domain."""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from tests.unit.sources_support import (
    Samples,
    assert_no_secret_refuses_unless_insecure,
    assert_refused,
    make_delivery,
    remove_field,
    tuples,
)
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import UNKNOWN_REGISTRY, PayloadError, get_source
from webhook.sources.artifactory import SOURCE, parse

SAMPLES = Samples("artifactory")
INDEX_DIGEST = "sha256:35c4a2c15539c6c1e4e5fa4e554dac323ad0107d8eb5c582d6ff386b383b7dce"


def docker_event(event_type: str = "pushed", **data_changes: Any) -> dict[str, Any]:
    """The doc's "Docker Tag was Pushed" data inside the envelope the doc shows for all domains."""
    event = SAMPLES.json("artifactory-artifact-deployed-envelope.json")
    data = SAMPLES.json("artifactory-docker-pushed.json")
    data.update(data_changes)
    event.update(domain="docker", event_type=event_type, data=data)
    return event


def parse_json(payload: Any) -> Any:
    return parse(Headers(), json.dumps(payload).encode())


def test_docker_tag_pushed_yields_image_name_and_tag_with_the_manifest_digest():
    result = parse_json(docker_event())
    assert tuples(result) == [(UNKNOWN_REGISTRY, "library/ubuntu", "latest", INDEX_DIGEST)]
    assert result.ignored == 0
    assert result.delivery is None
    assert result.events[0].source == "artifactory"


def test_repo_key_is_not_part_of_the_repository():
    result = parse_json(docker_event(repo_key="docker-local", image_name="team/app", tag="1.0"))
    assert tuples(result) == [(UNKNOWN_REGISTRY, "team/app", "1.0", INDEX_DIGEST)]


def test_artifact_deployed_envelope_is_ignored():
    result = parse_json(SAMPLES.json("artifactory-artifact-deployed-envelope.json"))
    assert (result.events, result.ignored) == ([], 1)


@pytest.mark.parametrize("event_type", ["deleted", "promoted"])
def test_other_docker_events_are_ignored(event_type):
    result = parse_json(docker_event(event_type))
    assert (result.events, result.ignored) == ([], 1)


def test_push_without_tag_is_ignored():
    result = parse_json(docker_event(tag=""))
    assert (result.events, result.ignored) == ([], 1)


def test_placeholder_checksum_becomes_no_digest():
    result = parse_json(docker_event(sha256="sample_checksum"))
    assert tuples(result) == [(UNKNOWN_REGISTRY, "library/ubuntu", "latest", None)]


def test_bare_data_object_from_the_doc_is_refused_naming_the_envelope_field():
    # The doc shows only the data object; real deliveries wrap it (see tests/payloads README).
    with pytest.raises(PayloadError, match="'domain'"):
        parse_json(SAMPLES.json("artifactory-docker-pushed.json"))


@pytest.mark.parametrize(
    ("remove", "field"),
    [
        ("event_type", "'event_type'"),
        ("data", "'data'"),
        ("data.image_name", "'data.image_name'"),
    ],
)
def test_missing_fields_are_named(remove, field):
    event = docker_event()
    remove_field(event, remove)
    with pytest.raises(PayloadError, match=field):
        parse_json(event)


def test_non_object_body_is_refused():
    with pytest.raises(PayloadError, match="JSON object"):
        parse_json([docker_event()])


def test_invalid_image_name_is_a_payload_error():
    with pytest.raises(PayloadError, match="invalid path component"):
        parse_json(docker_event(image_name="Library/Ubuntu"))


def test_source_is_registered_as_needing_a_configured_registry():
    assert get_source("artifactory") is SOURCE
    assert SOURCE.needs_registry is True


def delivery(headers: dict[str, str] | None = None) -> Delivery:
    return make_delivery(json.dumps(docker_event()).encode(), headers)


ENDPOINT = Endpoint(
    name="artifactory", source="artifactory", secret="s3cret", registry="art.example.com"
)


def test_secret_token_header_passes():
    SOURCE.authenticate(delivery({"X-JFrog-Event-Auth": "s3cret"}), ENDPOINT)


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-JFrog-Event-Auth": "wrong"}, {"Authorization": "Bearer s3cret"}],
)
def test_wrong_or_missing_token_is_refused(headers):
    assert_refused(SOURCE, delivery(headers), ENDPOINT)


def test_no_secret_configured_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
