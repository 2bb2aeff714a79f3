"""Tests for the Nexus adapter: repository component and asset webhooks, HMAC-SHA1 signed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from tests.unit.sources_support import (
    Samples,
    assert_no_secret_refuses_unless_insecure,
    assert_refused,
    hex_hmac,
    make_delivery,
    remove_field,
    tuples,
)
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import UNKNOWN_REGISTRY, PayloadError, get_source
from webhook.sources.nexus import SOURCE, parse

SAMPLES = Samples("nexus")
DELIVERY_ID = "7f4a6dde-5c68-4999-bcc0-a62f3fb8ae48"


def headers(kind: str = "rm:repository:component") -> Headers:
    return Headers(
        {
            "Content-Type": "application/json; charset=UTF-8",
            "X-Nexus-Webhook-Id": kind,
            "X-Nexus-Webhook-Delivery": DELIVERY_ID,
        }
    )


def component_event(**changes: Any) -> dict[str, Any]:
    event = SAMPLES.json("nexus-component-created-flux-recv.json")
    event["component"].update(changes)
    return event


def docker_asset_event(name: str, action: str = "CREATED") -> dict[str, Any]:
    """The doc's asset event with a docker asset instead of the npm one."""
    event = SAMPLES.json("nexus-asset-created.json")
    event.update(repositoryName="docker-hosted", action=action)
    event["asset"].update(format="docker", name=name)
    return event


def parse_json(payload: Any, kind: str = "rm:repository:component") -> Any:
    return parse(headers(kind), json.dumps(payload).encode())


def test_docker_component_created_yields_name_and_version():
    result = parse(headers(), SAMPLES.read("nexus-component-created-flux-recv.json"))
    assert tuples(result) == [(UNKNOWN_REGISTRY, "app1/alpine", "3.4", None)]
    assert result.ignored == 0
    assert result.delivery == DELIVERY_ID
    assert result.events[0].delivery == DELIVERY_ID
    assert result.events[0].source == "nexus"


def test_component_updated_is_a_push():
    event = component_event()
    event["action"] = "UPDATED"
    assert tuples(parse_json(event)) == [(UNKNOWN_REGISTRY, "app1/alpine", "3.4", None)]


def test_npm_asset_from_the_doc_is_ignored():
    result = parse(headers("rm:repository:asset"), SAMPLES.read("nexus-asset-created.json"))
    assert (result.events, result.ignored, result.delivery) == ([], 1, DELIVERY_ID)


def test_docker_manifest_asset_yields_the_tag_from_its_path():
    result = parse_json(docker_asset_event("v2/app1/alpine/manifests/3.4"), "rm:repository:asset")
    assert tuples(result) == [(UNKNOWN_REGISTRY, "app1/alpine", "3.4", None)]


@pytest.mark.parametrize(
    "name",
    [
        "v2/-/blobs/sha256:" + "a" * 64,
        "v2/app1/alpine/blobs/sha256:" + "a" * 64,
        "v2/app1/alpine/manifests/sha256:" + "a" * 64,
        "v2/app1/alpine/tags/list",
    ],
)
def test_docker_blob_digest_and_other_assets_are_ignored(name):
    result = parse_json(docker_asset_event(name), "rm:repository:asset")
    assert (result.events, result.ignored) == ([], 1)


def test_deleted_component_is_ignored():
    event = component_event()
    event["action"] = "DELETED"
    assert (parse_json(event).events, parse_json(event).ignored) == ([], 1)


def test_other_formats_are_ignored():
    result = parse_json(component_event(format="maven2", name="widget", version="1.0.0"))
    assert (result.events, result.ignored) == ([], 1)


def test_digest_version_is_ignored():
    result = parse_json(component_event(version="sha256:" + "b" * 64))
    assert (result.events, result.ignored) == ([], 1)


def test_global_audit_event_is_ignored():
    # "Example Audit Payload" from the same Sonatype page, trimmed.
    audit = {
        "nodeId": "7FFA7361-6ED33978-36997BD4-47095CC4-331356BE",
        "initiator": "admin/127.0.0.1",
        "audit": {"domain": "security.user", "type": "created", "context": "testuser"},
    }
    result = parse_json(audit, "rm:global:audit")
    assert (result.events, result.ignored) == ([], 1)


@pytest.mark.parametrize(
    ("remove", "field"),
    [
        ("action", "'action'"),
        ("component.name", "'component.name'"),
        ("component.version", "'component.version'"),
    ],
)
def test_missing_component_fields_are_named(remove, field):
    event = component_event()
    remove_field(event, remove)
    with pytest.raises(PayloadError, match=field):
        parse_json(event)


def test_missing_asset_name_is_named():
    event = docker_asset_event("v2/app1/alpine/manifests/3.4")
    del event["asset"]["name"]
    with pytest.raises(PayloadError, match="'asset.name'"):
        parse_json(event, "rm:repository:asset")


def test_component_that_is_not_an_object_is_refused():
    with pytest.raises(PayloadError, match="'component'"):
        parse_json({"action": "CREATED", "component": "app1/alpine:3.4"})


def test_non_json_body_is_refused():
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse(headers(), b"action=CREATED")


def test_source_is_registered_as_needing_a_configured_registry():
    assert get_source("nexus") is SOURCE
    assert SOURCE.needs_registry is True


# --- authentication: HMAC-SHA1 of the raw body -------------------------------------------------

BODY = SAMPLES.read("nexus-component-created-flux-recv.json")
ENDPOINT = Endpoint(name="nexus", source="nexus", secret="s3cret", registry="nexus.example.com")


def signed(body: bytes = BODY, secret: str = "s3cret", digestmod: Any = hashlib.sha1) -> str:
    return hex_hmac(body, secret, digestmod)


def delivery(signature: str | None, body: bytes = BODY) -> Delivery:
    given = headers()
    if signature is not None:
        given["X-Nexus-Webhook-Signature"] = signature
    return make_delivery(body, given)


def test_signature_of_the_body_passes():
    SOURCE.authenticate(delivery(signed()), ENDPOINT)


def test_upper_case_hex_signature_passes():
    SOURCE.authenticate(delivery(signed().upper()), ENDPOINT)


def test_tampered_body_fails():
    tampered = BODY.replace(b'"version":"3.4"', b'"version":"3.5"')
    assert tampered != BODY
    assert_refused(SOURCE, delivery(signed(), body=tampered), ENDPOINT, "does not match")


@pytest.mark.parametrize(
    "signature",
    [
        signed(secret="wrong"),
        signed(digestmod=hashlib.sha256),
        "sha1=" + signed(),
        "",
    ],
)
def test_wrong_signature_fails(signature):
    assert_refused(SOURCE, delivery(signature), ENDPOINT)


def test_missing_signature_fails():
    assert_refused(SOURCE, delivery(None), ENDPOINT, "missing signature")


def test_no_secret_configured_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery(None))
