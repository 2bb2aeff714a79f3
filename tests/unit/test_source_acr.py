"""Tests for the ACR adapter: native webhooks, Event Grid (both schemas), validation handshake."""

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
from webhook.sources.acr import SOURCE, parse

SAMPLES = Samples("acr")
PUSH_DIGEST = "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d"
GRID_DIGEST = "sha256:213bbc182920ab41e18edc2001e06abcca6735d87782d9cef68abd83941cf0e5"


def parse_json(payload: Any) -> Any:
    return parse(Headers(), json.dumps(payload).encode())


def grid_as_cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    """The 2018 Event Grid sample re-keyed as the current doc's CloudEvents 1.0 example."""
    return {
        "id": event["id"],
        "source": event["topic"],
        "subject": event["subject"],
        "type": "Microsoft.ContainerRegistry.ImagePushed",
        "time": event["eventTime"],
        "data": event["data"],
        "specversion": "1.0",
    }


# --- native webhooks -------------------------------------------------------------------------


def test_native_push_yields_the_tagged_image_with_host_from_request():
    result = parse(Headers(), SAMPLES.read("acr-push.json"))
    assert tuples(result) == [("myregistry.azurecr.io", "hello-world", "v1", PUSH_DIGEST)]
    assert result.ignored == 0
    assert result.delivery == "cb8c3971-9adc-488b-bdd8-43cbb4974ff5"
    assert result.events[0].source == "acr"
    assert result.events[0].delivery == result.delivery


def test_redacted_current_doc_push_drops_the_xxxx_digest():
    result = parse(Headers(), SAMPLES.read("acr-push-current-doc-redacted.json"))
    assert tuples(result) == [("myregistry.azurecr.io", "hello-world", "v1", None)]


@pytest.mark.parametrize("name", ["acr-delete.json", "acr-chart-push.json"])
def test_delete_and_chart_push_are_ignored(name):
    result = parse(Headers(), SAMPLES.read(name))
    assert result.events == []
    assert result.ignored == 1
    assert result.reply is None


@pytest.mark.parametrize("action", ["ping", "quarantine", "chart_delete"])
def test_other_native_actions_are_ignored(action):
    payload = SAMPLES.json("acr-push.json")
    payload["action"] = action
    result = parse_json(payload)
    assert (result.events, result.ignored) == ([], 1)


def test_untagged_native_push_is_ignored():
    payload = SAMPLES.json("acr-push.json")
    del payload["target"]["tag"]
    result = parse_json(payload)
    assert (result.events, result.ignored) == ([], 1)


# --- Event Grid ------------------------------------------------------------------------------


def test_event_grid_2018_sample_yields_the_push_with_the_grid_event_id():
    result = parse(Headers(), SAMPLES.read("acr-eventgrid-imagepushed-2018-doc.json"))
    assert tuples(result) == [("demo.azurecr.io", "aci-helloworld", "v1", GRID_DIGEST)]
    assert result.delivery == "831e1650-001e-001b-66ab-eeb76e069631"
    assert result.events[0].delivery == "831e1650-001e-001b-66ab-eeb76e069631"


def test_event_grid_current_event_type_name_is_accepted():
    events = SAMPLES.json("acr-eventgrid-imagepushed-2018-doc.json")
    events[0]["eventType"] = "Microsoft.ContainerRegistry.ImagePushed"
    assert tuples(parse_json(events)) == [("demo.azurecr.io", "aci-helloworld", "v1", GRID_DIGEST)]


def test_cloudevents_schema_array_and_single_structured_event_are_read():
    event = grid_as_cloudevent(SAMPLES.json("acr-eventgrid-imagepushed-2018-doc.json")[0])
    expected = [("demo.azurecr.io", "aci-helloworld", "v1", GRID_DIGEST)]
    assert tuples(parse_json([event])) == expected
    single = parse_json(event)
    assert tuples(single) == expected
    assert single.delivery == "831e1650-001e-001b-66ab-eeb76e069631"


@pytest.mark.parametrize(
    "event_type",
    [
        "Microsoft.ContainerRegistry.ImageDeleted",
        "Microsoft.ContainerRegistry.ChartPushed",
        "Microsoft.ContainerRegistry.ChartDeleted",
    ],
)
def test_other_event_grid_types_are_ignored(event_type):
    events = SAMPLES.json("acr-eventgrid-imagepushed-2018-doc.json")
    events[0]["eventType"] = event_type
    result = parse_json(events)
    assert (result.events, result.ignored) == ([], 1)


def test_batch_counts_each_event_and_has_no_delivery_id():
    pushed = SAMPLES.json("acr-eventgrid-imagepushed-2018-doc.json")[0]
    deleted = dict(pushed, id="other", eventType="Microsoft.ContainerRegistry.ImageDeleted")
    result = parse_json([pushed, deleted])
    assert tuples(result) == [("demo.azurecr.io", "aci-helloworld", "v1", GRID_DIGEST)]
    assert result.ignored == 1
    assert result.delivery is None


def test_subscription_validation_is_answered_with_the_code():
    # Shape from learn.microsoft.com event-grid/webhook-event-delivery.
    validation = [
        {
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "topic": "/subscriptions/xx/resourceGroups/rg/providers/Microsoft.EventGrid/topics/t",
            "subject": "",
            "data": {
                "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/x/validate?id=512d38b6",
            },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2018-01-25T22:12:19.4556811Z",
            "metadataVersion": "1",
            "dataVersion": "1",
        }
    ]
    result = parse_json(validation)
    assert result.reply == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert result.events == []


def test_subscription_validation_without_code_names_the_field():
    validation = [{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]
    with pytest.raises(PayloadError, match=r"\[0\]\.data\.validationCode"):
        parse_json(validation)


# --- malformed bodies ------------------------------------------------------------------------


def test_non_json_body_is_refused():
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse(Headers(), b"<xml/>")


def test_scalar_body_is_refused():
    with pytest.raises(PayloadError, match="JSON object or an array"):
        parse(Headers(), b"42")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("action", "'action'"),
        ("target", "'target'"),
        ("target.repository", "'target.repository'"),
        ("request.host", "'request.host'"),
    ],
)
def test_native_push_missing_field_is_named(path, field):
    payload = SAMPLES.json("acr-push.json")
    remove_field(payload, path)
    with pytest.raises(PayloadError, match=field):
        parse_json(payload)


def test_grid_event_without_type_is_named():
    events = SAMPLES.json("acr-eventgrid-imagepushed-2018-doc.json")
    del events[0]["eventType"]
    with pytest.raises(PayloadError, match=r"\[0\]\.eventType"):
        parse_json(events)


def test_grid_push_without_target_names_the_path():
    events = SAMPLES.json("acr-eventgrid-imagepushed-2018-doc.json")
    del events[0]["data"]["target"]
    with pytest.raises(PayloadError, match=r"\[0\]\.data\.target"):
        parse_json(events)


def test_invalid_repository_is_a_payload_error():
    payload = SAMPLES.json("acr-push.json")
    payload["target"]["repository"] = "Hello World"
    with pytest.raises(PayloadError, match="invalid path component"):
        parse_json(payload)


# --- registration and authentication ---------------------------------------------------------


def test_source_is_registered_with_a_host_from_the_payload():
    assert get_source("acr") is SOURCE
    assert SOURCE.needs_registry is False


def delivery(headers: dict[str, str] | None = None, **kwargs: Any) -> Delivery:
    return make_delivery(SAMPLES.read("acr-push.json"), headers, **kwargs)


ENDPOINT = Endpoint(name="acr", source="acr", secret="s3cret")


@pytest.mark.parametrize(
    "given",
    [
        delivery({"Authorization": "Bearer s3cret"}),
        delivery({"Authorization": "s3cret"}),
        delivery(query={"token": "s3cret"}),
        delivery(path_secret="s3cret"),
    ],
)
def test_right_secret_in_header_or_url_passes(given):
    SOURCE.authenticate(given, ENDPOINT)


@pytest.mark.parametrize(
    "given",
    [
        delivery(),
        delivery({"Authorization": "Bearer wrong"}),
        delivery(query={"token": "wrong"}),
        delivery(path_secret="wrong"),
        delivery({"X-Other": "s3cret"}),
    ],
)
def test_wrong_or_missing_secret_is_refused(given):
    assert_refused(SOURCE, given, ENDPOINT)


def test_endpoint_header_overrides_the_default_header():
    endpoint = Endpoint(name="acr", source="acr", secret="s3cret", header="X-Podhook-Token")
    SOURCE.authenticate(delivery({"X-Podhook-Token": "s3cret"}), endpoint)
    assert_refused(SOURCE, delivery({"X-Podhook-Token": "nope"}), endpoint)


def test_no_secret_configured_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
