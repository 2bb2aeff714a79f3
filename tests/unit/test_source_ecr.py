"""Tests for the ECR adapter: EventBridge "ECR Image Action" events from an API destination."""

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
from webhook.sources import PayloadError, get_source
from webhook.sources.ecr import SOURCE, parse, registry_host

SAMPLES = Samples("ecr")
OBSERVED_DIGEST = "sha256:778645862e8bba7ad64eabc8f6b51158e47124c12864ed42d7baf744b6329542"


def parse_json(payload: Any) -> Any:
    return parse(Headers(), json.dumps(payload).encode())


def test_doc_push_yields_the_image_on_the_account_registry():
    result = parse(Headers(), SAMPLES.read("ecr-eventbridge-push.json"))
    # The doc digest "sha256:7f5b...1234" has 60 hex digits: dropped, not refused.
    assert tuples(result) == [
        ("123456789012.dkr.ecr.us-west-2.amazonaws.com", "my-repository-name", "latest", None)
    ]
    assert result.ignored == 0
    assert result.delivery == "13cde686-328b-6117-af20-0e5566167482"
    assert result.events[0].delivery == result.delivery
    assert result.events[0].source == "ecr"


@pytest.mark.parametrize(
    "name",
    [
        "ecr-eventbridge-delete.json",
        "ecr-eventbridge-archive-update-storage-class.json",
        "ecr-eventbridge-replication.json",
        "ecr-eventbridge-pull-through-cache.fixed.json",
        "ecr-eventbridge-push-untagged-with-mediatypes.json",
    ],
)
def test_non_push_and_untagged_events_are_ignored(name):
    result = parse(Headers(), SAMPLES.read(name))
    assert result.events == []
    assert result.ignored == 1
    assert result.delivery == SAMPLES.json(name)["id"]


def test_verbatim_pull_through_cache_sample_is_refused_for_its_trailing_comma():
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse(Headers(), SAMPLES.read("ecr-eventbridge-pull-through-cache.verbatim-invalid.jsonc"))


def test_observed_push_with_a_tag_keeps_its_full_digest():
    event = SAMPLES.json("ecr-eventbridge-push-untagged-with-mediatypes.json")
    event["detail"]["image-tag"] = "v1.2"
    assert tuples(parse_json(event)) == [
        (
            "123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "nudgebee_runbook_sidecar_agent",
            "v1.2",
            OBSERVED_DIGEST,
        )
    ]


def test_failed_push_is_ignored():
    event = SAMPLES.json("ecr-eventbridge-push.json")
    event["detail"]["result"] = "FAILURE"
    result = parse_json(event)
    assert (result.events, result.ignored) == ([], 1)


def test_events_from_other_sources_are_ignored():
    event = SAMPLES.json("ecr-eventbridge-push.json")
    event["source"] = "aws.s3"
    assert parse_json(event).ignored == 1
    event = SAMPLES.json("ecr-eventbridge-push.json")
    event["detail-type"] = "ECR Image Scan"
    assert parse_json(event).ignored == 1


def test_china_regions_use_the_cn_domain():
    event = SAMPLES.json("ecr-eventbridge-push.json")
    event["region"] = "cn-north-1"
    assert tuples(parse_json(event))[0][0] == "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
    assert registry_host("1", "eu-west-1") == "1.dkr.ecr.eu-west-1.amazonaws.com"


def test_nested_repository_names_are_kept():
    event = SAMPLES.json("ecr-eventbridge-push.json")
    event["detail"]["repository-name"] = "team/app"
    assert tuples(parse_json(event))[0][1] == "team/app"


@pytest.mark.parametrize(
    ("remove", "field"),
    [
        ("detail", "'detail'"),
        ("detail.action-type", "'detail.action-type'"),
        ("detail.result", "'detail.result'"),
        ("detail.repository-name", "'detail.repository-name'"),
        ("account", "'account'"),
        ("region", "'region'"),
        ("source", "'source'"),
        ("detail-type", "'detail-type'"),
    ],
)
def test_missing_fields_are_named(remove, field):
    event = SAMPLES.json("ecr-eventbridge-push.json")
    remove_field(event, remove)
    with pytest.raises(PayloadError, match=field):
        parse_json(event)


def test_account_that_is_not_a_number_is_refused():
    event = SAMPLES.json("ecr-eventbridge-push.json")
    event["account"] = "evil.example.com/x"
    with pytest.raises(PayloadError, match="'account'"):
        parse_json(event)


def test_array_body_is_refused():
    with pytest.raises(PayloadError, match="JSON object"):
        parse_json([SAMPLES.json("ecr-eventbridge-push.json")])


def test_source_is_registered_with_a_derived_host():
    assert get_source("ecr") is SOURCE
    assert SOURCE.needs_registry is False


def delivery(headers: dict[str, str] | None = None) -> Delivery:
    return make_delivery(SAMPLES.read("ecr-eventbridge-push.json"), headers)


ENDPOINT = Endpoint(name="ecr", source="ecr", secret="s3cret")


@pytest.mark.parametrize("value", ["Bearer s3cret", "s3cret"])
def test_api_key_header_with_the_secret_passes(value):
    SOURCE.authenticate(delivery({"Authorization": value}), ENDPOINT)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"x-api-key": "s3cret"}])
def test_wrong_or_missing_api_key_is_refused(headers):
    assert_refused(SOURCE, delivery(headers), ENDPOINT)


def test_secret_in_the_url_is_not_accepted():
    given = make_delivery(b"{}", query={"token": "s3cret"}, path_secret="s3cret")
    assert_refused(SOURCE, given, ENDPOINT, "missing Authorization")


def test_endpoint_header_names_the_connection_api_key_header():
    endpoint = Endpoint(name="ecr", source="ecr", secret="s3cret", header="x-api-key")
    SOURCE.authenticate(delivery({"X-Api-Key": "s3cret"}), endpoint)
    assert_refused(SOURCE, delivery({"Authorization": "s3cret"}), endpoint)


def test_no_secret_configured_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
