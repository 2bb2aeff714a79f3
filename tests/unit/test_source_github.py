"""Tests for the GitHub Packages adapter against the octokit examples and variants of them."""

from __future__ import annotations

import copy
import json
from urllib.parse import urlencode

import pytest
from werkzeug.datastructures import Headers

from tests.unit.sources_support import (
    Samples,
    assert_no_secret_refuses_unless_insecure,
    assert_refused,
    hex_hmac,
    make_delivery,
    tuples,
)
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import PayloadError, get_source
from webhook.sources.github import SOURCE, parse

SAMPLES = Samples("github")
DIGEST = "sha256:5ba041a0ac626a8240c8e2571d323320d2a4de35f8b5814af1b12df0348a7e96"
DELIVERY_ID = "40731f00-2623-11ec-8a58-45788bc19979"


def headers(event: str = "registry_package", **extra: str) -> Headers:
    return Headers(
        {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": DELIVERY_ID,
            "Content-Type": "application/json",
            **extra,
        }
    )


def tagged(name: str = "github-registry-package-published.json", key: str = "registry_package"):
    """The octokit example made consistent the way real deliveries are, and tagged."""
    payload = SAMPLES.json(name)
    package = payload[key]
    package["package_type"] = "CONTAINER"
    package["ecosystem"] = "CONTAINER"
    version = package["package_version"]
    version["container_metadata"]["tag"] = {"name": "latest", "digest": DIGEST}
    version["container_metadata"]["manifest"]["digest"] = DIGEST
    version["package_url"] = "ghcr.io/Codertocat/hello-world:latest"
    return payload


def test_registered_with_hub_signature():
    assert get_source("github") is SOURCE
    assert SOURCE.needs_registry is False


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("github-registry-package-published.json", "registry_package"),
        ("github-package-published.json", "package"),
    ],
)
def test_octokit_examples_are_untagged_and_ignored(name, event):
    # container_metadata.tag.name is "" in both examples: an untagged (per-platform) manifest.
    result = parse(headers(event), SAMPLES.read(name))
    assert result.events == []
    assert result.ignored == 1
    assert result.delivery == DELIVERY_ID


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("github-registry-package-published.json", "registry_package"),
        ("github-package-published.json", "package"),
    ],
)
def test_tagged_container_version(name, event):
    body = json.dumps(tagged(name, event)).encode()
    result = parse(headers(event), body)
    # Owner and name lower-cased: ghcr.io serves lower-case paths only.
    assert tuples(result) == [("ghcr.io", "codertocat/hello-world", "latest", DIGEST)]
    assert result.delivery == DELIVERY_ID
    assert result.events[0].delivery == DELIVERY_ID
    assert result.events[0].source == "github"


def test_updated_action_is_a_push():
    payload = tagged()
    payload["action"] = "updated"
    result = parse(headers(), json.dumps(payload).encode())
    assert [e.reference for e in result.events] == ["ghcr.io/codertocat/hello-world:latest"]


def test_octokit_40_hex_digest_is_dropped():
    payload = tagged()
    metadata = payload["registry_package"]["package_version"]["container_metadata"]
    metadata["manifest"]["digest"] = "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
    metadata["tag"]["digest"] = "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b"
    result = parse(headers(), json.dumps(payload).encode())
    assert tuples(result) == [("ghcr.io", "codertocat/hello-world", "latest", None)]


def test_tag_digest_is_used_when_the_manifest_has_none():
    payload = tagged()
    del payload["registry_package"]["package_version"]["container_metadata"]["manifest"]
    result = parse(headers(), json.dumps(payload).encode())
    assert result.events[0].digest == DIGEST


def test_without_package_url_the_owner_and_nested_name_are_used():
    # Shape of the real capture in JRoy/disgit#3: name holds a '/', owner.login keeps its case.
    payload = tagged()
    package = payload["registry_package"]
    del package["package_version"]["package_url"]
    package["name"] = "RepositoryName/frontend"
    package["owner"]["login"] = "NoahvdAa"
    result = parse(headers(), json.dumps(payload).encode())
    assert tuples(result) == [("ghcr.io", "noahvdaa/repositoryname/frontend", "latest", DIGEST)]


def test_enterprise_server_host_comes_from_package_url():
    payload = tagged()
    payload["registry_package"]["package_version"]["package_url"] = (
        "containers.ghes.example.com/Codertocat/hello-world:latest"
    )
    result = parse(headers(), json.dumps(payload).encode())
    assert result.events[0].registry == "containers.ghes.example.com"


def test_form_encoded_body_is_read():
    body = urlencode({"payload": json.dumps(tagged())}).encode()
    form = headers(**{"Content-Type": "application/x-www-form-urlencoded"})
    result = parse(form, body)
    assert tuples(result) == [("ghcr.io", "codertocat/hello-world", "latest", DIGEST)]


@pytest.mark.parametrize("event", ["ping", "push", "release", "workflow_run"])
def test_other_events_are_ignored_and_ping_answers(event):
    body = json.dumps({"zen": "Design for failure.", "hook_id": 321104258}).encode()
    result = parse(headers(event), body)
    assert result.events == []
    assert result.ignored == 1
    assert result.delivery == DELIVERY_ID


def test_non_container_packages_are_ignored():
    payload = tagged()
    payload["registry_package"]["package_type"] = "npm"
    payload["registry_package"]["ecosystem"] = "npm"
    result = parse(headers(), json.dumps(payload).encode())
    assert result.events == []
    assert result.ignored == 1


def test_other_actions_are_ignored():
    payload = tagged()
    payload["action"] = "deleted"
    result = parse(headers(), json.dumps(payload).encode())
    assert (result.events, result.ignored) == ([], 1)


def test_missing_event_header_is_refused():
    with pytest.raises(PayloadError, match="X-GitHub-Event"):
        parse(Headers({"Content-Type": "application/json"}), json.dumps(tagged()).encode())


def metadata_of(payload):
    return payload["registry_package"]["package_version"]["container_metadata"]


def drop_reference(payload, key):
    """Remove package_url and one of the fields podhook falls back to."""
    package = payload["registry_package"]
    del package["package_version"]["package_url"]
    if key == "login":
        del package["owner"]["login"]
    else:
        del package[key]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("action"), "'action'"),
        (lambda p: p.pop("registry_package"), "'registry_package'"),
        (lambda p: p.update(registry_package=[]), "'registry_package'"),
        (lambda p: p["registry_package"].pop("package_version"), "package_version"),
        (lambda p: p["registry_package"]["package_version"].pop("container_metadata"), "metadata"),
        (lambda p: metadata_of(p).pop("tag"), "container_metadata.tag"),
        (lambda p: metadata_of(p)["tag"].update(name=None), "container_metadata.tag.name"),
        (lambda p: drop_reference(p, "login"), "owner.login"),
        (lambda p: drop_reference(p, "name"), "'name'"),
        (
            lambda p: p["registry_package"]["package_version"].update(
                package_url="ghcr.io/Code rtocat/hello:latest"
            ),
            "package_version",
        ),
    ],
)
def test_malformed_bodies_name_the_field(mutate, field):
    payload = tagged()
    mutate(payload)
    with pytest.raises(PayloadError, match=field):
        parse(headers(), json.dumps(payload).encode())


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"payload=%7B", "application/x-www-form-urlencoded", "not valid JSON"),
        (b"other=1", "application/x-www-form-urlencoded", "'payload'"),
        (b"payload=1&payload=2", "application/x-www-form-urlencoded", "'payload'"),
        (b"payload=%FF", "application/x-www-form-urlencoded", "not valid JSON"),
    ],
)
def test_unreadable_bodies_are_refused(body, content_type, message):
    with pytest.raises(PayloadError, match=message):
        parse(headers(**{"Content-Type": content_type}), body)


# Authentication: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256 of the raw body.

SECRET = "gh-webhook-secret"
ENDPOINT = Endpoint(name="github", source="github", secret=SECRET)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hex_hmac(body, secret)


def delivery(body: bytes, **extra: str) -> Delivery:
    return make_delivery(body, headers(**extra))


def test_right_signature_passes():
    body = SAMPLES.read("github-registry-package-published.json")
    SOURCE.authenticate(delivery(body, **{"X-Hub-Signature-256": sign(body)}), ENDPOINT)


def test_signature_of_a_form_body_covers_the_raw_form():
    body = urlencode({"payload": json.dumps(tagged())}).encode()
    signed = delivery(
        body,
        **{"X-Hub-Signature-256": sign(body), "Content-Type": "application/x-www-form-urlencoded"},
    )
    SOURCE.authenticate(signed, ENDPOINT)


def test_tampered_body_fails():
    body = SAMPLES.read("github-registry-package-published.json")
    signature = sign(body)
    tampered = copy.deepcopy(json.loads(body))
    tampered["registry_package"]["package_version"]["package_url"] = "ghcr.io/evil/app:latest"
    given = delivery(json.dumps(tampered).encode(), **{"X-Hub-Signature-256": signature})
    assert_refused(SOURCE, given, ENDPOINT, "does not match")


@pytest.mark.parametrize(
    "extra",
    [
        {"X-Hub-Signature-256": sign(b"{}", "another-secret")},
        {"X-Hub-Signature-256": "sha256="},
        {"X-Hub-Signature": "sha1=b41050eb19815f29b573ba5405dd347265041014"},
        {},
    ],
)
def test_wrong_or_missing_signature_is_refused(extra):
    assert_refused(SOURCE, delivery(b"{}", **extra), ENDPOINT)


def test_no_secret_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery(b"{}"))
