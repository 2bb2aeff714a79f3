"""Tests for the zot adapter: binary-mode CloudEvents from zot's events extension."""

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
    tuples,
)
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import UNKNOWN_REGISTRY, PayloadError, get_source
from webhook.sources.zot import SOURCE, parse

SAMPLES = Samples("zot")
FULL_DIGEST = "sha256:" + "ab" * 32
CE_ID = "6f2e3a4c-3f0e-4c55-9a51-0f1b2c3d4e5f"


def ce_headers(kind: str = "zotregistry.image.updated", **extra: str) -> Headers:
    """The binary-mode headers cloudevents sdk-go writes for zot's HTTP sink."""
    return Headers(
        {
            "Content-Type": "application/json",
            "Ce-Specversion": "1.0",
            "Ce-Id": CE_ID,
            "Ce-Source": "zotregistry.dev",
            "Ce-Type": kind,
            "Ce-Time": "2025-01-01T00:00:00Z",
            **extra,
        }
    )


def updated(**changes: Any) -> bytes:
    data = SAMPLES.json("zot-image-updated-data.json")
    data.update(changes)
    return json.dumps(data).encode()


def test_image_updated_yields_the_tag_with_the_placeholder_registry():
    result = parse(ce_headers(), SAMPLES.read("zot-image-updated-data.json"))
    # The doc digest "sha256:abc..." is a placeholder: dropped, not refused.
    assert tuples(result) == [(UNKNOWN_REGISTRY, "space/my-image", "latest", None)]
    assert result.ignored == 0
    assert result.delivery == CE_ID
    assert result.events[0].delivery == CE_ID
    assert result.events[0].source == "zot"


def test_full_digest_is_kept():
    result = parse(ce_headers(), updated(digest=FULL_DIGEST))
    assert tuples(result) == [(UNKNOWN_REGISTRY, "space/my-image", "latest", FULL_DIGEST)]


def test_custom_type_prefix_is_accepted():
    result = parse(ce_headers("com.example.registry.image.updated"), updated())
    assert tuples(result) == [(UNKNOWN_REGISTRY, "space/my-image", "latest", None)]


def test_image_scanned_sample_is_ignored():
    result = parse(
        ce_headers("zotregistry.image.scanned"), SAMPLES.read("zot-image-scanned-data.json")
    )
    assert (result.events, result.ignored, result.delivery) == ([], 1, CE_ID)


@pytest.mark.parametrize(
    "kind",
    [
        "zotregistry.image.deleted",
        "zotregistry.image.lint_failed",
        "zotregistry.repository.created",
    ],
)
def test_other_event_types_are_ignored(kind):
    result = parse(ce_headers(kind), updated())
    assert (result.events, result.ignored) == ([], 1)


def test_update_by_digest_is_ignored():
    result = parse(ce_headers(), updated(reference=FULL_DIGEST, digest=FULL_DIGEST))
    assert (result.events, result.ignored) == ([], 1)


def test_real_event_with_manifest_string_is_read():
    media_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": media_type})
    result = parse(ce_headers(), updated(manifest=manifest, digest=FULL_DIGEST))
    assert tuples(result) == [(UNKNOWN_REGISTRY, "space/my-image", "latest", FULL_DIGEST)]


def test_structured_mode_event_is_read_from_the_body():
    data = SAMPLES.json("zot-image-updated-data.json")
    event = {
        "specversion": "1.0",
        "id": "structured-1",
        "source": "zotregistry.dev",
        "type": "zotregistry.image.updated",
        "datacontenttype": "application/json",
        "data": data,
    }
    headers = Headers({"Content-Type": "application/cloudevents+json"})
    result = parse(headers, json.dumps(event).encode())
    assert tuples(result) == [(UNKNOWN_REGISTRY, "space/my-image", "latest", None)]
    assert result.delivery == "structured-1"


def test_missing_ce_type_is_named():
    with pytest.raises(PayloadError, match="ce-type"):
        parse(
            Headers({"Content-Type": "application/json"}),
            SAMPLES.read("zot-image-updated-data.json"),
        )


@pytest.mark.parametrize("field", ["name", "reference"])
def test_missing_data_field_is_named(field):
    data = SAMPLES.json("zot-image-updated-data.json")
    del data[field]
    with pytest.raises(PayloadError, match=f"'{field}'"):
        parse(ce_headers(), json.dumps(data).encode())


def test_non_object_data_is_refused():
    with pytest.raises(PayloadError, match="JSON object"):
        parse(ce_headers(), b'["space/my-image"]')


def test_invalid_repository_name_is_a_payload_error():
    with pytest.raises(PayloadError, match="invalid path component"):
        parse(ce_headers(), updated(name="Space/My Image"))


def test_source_is_registered_as_needing_a_configured_registry():
    assert get_source("zot") is SOURCE
    assert SOURCE.needs_registry is True


def delivery(headers: dict[str, str] | None = None) -> Delivery:
    return make_delivery(SAMPLES.read("zot-image-updated-data.json"), headers)


ENDPOINT = Endpoint(name="zot", source="zot", secret="s3cret", registry="zot.example.com")


def test_bearer_token_from_credentials_token_passes():
    SOURCE.authenticate(delivery({"Authorization": "Bearer s3cret"}), ENDPOINT)


def test_basic_credentials_pass_when_the_secret_is_the_whole_header_value():
    endpoint = Endpoint(name="zot", source="zot", secret="Basic d2ViaG9vazpzM2NyZXQ=")
    SOURCE.authenticate(delivery({"Authorization": "Basic d2ViaG9vazpzM2NyZXQ="}), endpoint)
    assert_refused(SOURCE, delivery({"Authorization": "Basic d3Jvbmc6d3Jvbmc="}), endpoint)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"X-Token": "s3cret"}])
def test_wrong_or_missing_token_is_refused(headers):
    assert_refused(SOURCE, delivery(headers), ENDPOINT)


def test_endpoint_header_overrides_authorization():
    endpoint = Endpoint(name="zot", source="zot", secret="s3cret", header="X-Podhook-Token")
    SOURCE.authenticate(delivery({"X-Podhook-Token": "s3cret"}), endpoint)


def test_no_secret_configured_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
