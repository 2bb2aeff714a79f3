"""Tests for the Gitea/Forgejo adapter against payloads derived from Gitea's source."""

from __future__ import annotations

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
from webhook.sources.gitea import SOURCE, parse

SAMPLES = Samples("gitea")
DELIVERY_ID = "9a3c5b1e-6f0d-4e2a-8c7b-1d2e3f405162"


def gitea_headers(event: str = "package", **extra: str) -> Headers:
    # services/webhook/deliver.go sends the Gitea, Gogs and GitHub names with the same values.
    return Headers(
        {
            "Content-Type": "application/json",
            "X-Gitea-Delivery": DELIVERY_ID,
            "X-Gitea-Event": event,
            "X-Gitea-Event-Type": event,
            "X-Gogs-Delivery": DELIVERY_ID,
            "X-Gogs-Event": event,
            "X-GitHub-Delivery": DELIVERY_ID,
            "X-GitHub-Event": event,
            **extra,
        }
    )


def with_changes(**package_changes) -> bytes:
    payload = SAMPLES.json("gitea-package-created.json")
    payload["package"].update(package_changes)
    return json.dumps(payload).encode()


def test_registered_with_gitea_signature():
    assert get_source("gitea") is SOURCE
    assert SOURCE.needs_registry is False


def test_tag_push():
    result = parse(gitea_headers(), SAMPLES.read("gitea-package-created.json"))
    # Owner "Acme" and the host of html_url (ROOT_URL); Gitea sends no digest.
    assert tuples(result) == [("git.example.com", "acme/webapp", "1.4.2", None)]
    assert result.ignored == 0
    assert result.delivery == DELIVERY_ID
    assert result.events[0].delivery == DELIVERY_ID
    assert result.events[0].source == "gitea"


def test_forgejo_headers_alone_are_enough():
    forgejo = Headers(
        {
            "Content-Type": "application/json",
            "X-Forgejo-Delivery": "f0f0f0f0-0000-4000-8000-000000000001",
            "X-Forgejo-Event": "package",
        }
    )
    result = parse(forgejo, SAMPLES.read("gitea-package-created.json"))
    assert tuples(result) == [("git.example.com", "acme/webapp", "1.4.2", None)]
    assert result.delivery == "f0f0f0f0-0000-4000-8000-000000000001"


def test_push_by_digest_is_ignored():
    # Each platform manifest of a multi-arch push arrives with version = its digest.
    result = parse(gitea_headers(), SAMPLES.read("gitea-package-created-digest.json"))
    assert result.events == []
    assert result.ignored == 1
    assert result.delivery == DELIVERY_ID


def test_root_url_port_and_sub_path():
    body = with_changes(html_url="http://gitea.lan:3000/git/Acme/-/packages/container/webapp/1.4.2")
    assert tuples(parse(gitea_headers(), body)) == [
        ("gitea.lan:3000", "acme/webapp", "1.4.2", None)
    ]


def test_nested_image_name_is_lower_cased():
    body = with_changes(name="Team/WebApp")
    assert parse(gitea_headers(), body).events[0].repository == "acme/team/webapp"


@pytest.mark.parametrize("event", ["push", "release", "create"])
def test_other_events_are_ignored(event):
    result = parse(gitea_headers(event), b'{"ref": "refs/heads/main"}')
    assert (result.events, result.ignored, result.delivery) == ([], 1, DELIVERY_ID)


def test_deleted_packages_are_ignored():
    payload = SAMPLES.json("gitea-package-created.json")
    payload["action"] = "deleted"
    result = parse(gitea_headers(), json.dumps(payload).encode())
    assert (result.events, result.ignored) == ([], 1)


def test_other_package_types_are_ignored():
    result = parse(gitea_headers(), with_changes(type="npm", version="1.4.2"))
    assert (result.events, result.ignored) == ([], 1)


def test_form_encoded_body_is_read():
    body = urlencode({"payload": SAMPLES.read("gitea-package-created.json").decode()}).encode()
    form = gitea_headers(**{"Content-Type": "application/x-www-form-urlencoded"})
    assert tuples(parse(form, body)) == [("git.example.com", "acme/webapp", "1.4.2", None)]


def test_missing_event_header_is_refused():
    with pytest.raises(PayloadError, match="X-Gitea-Event"):
        parse(
            Headers({"Content-Type": "application/json"}),
            SAMPLES.read("gitea-package-created.json"),
        )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("action"), "'action'"),
        (lambda p: p.pop("package"), "'package'"),
        (lambda p: p["package"].pop("type"), "package.type"),
        (lambda p: p["package"].pop("version"), "package.version"),
        (lambda p: p["package"]["owner"].pop("login"), "package.owner.login"),
        (lambda p: p["package"].update(owner=None), "package.owner"),
        (lambda p: p["package"].pop("name"), "package.name"),
        (lambda p: p["package"].pop("html_url"), "package.html_url"),
        (lambda p: p["package"].update(html_url="/Acme/-/packages"), "package.html_url"),
        (lambda p: p["package"].update(name="web app"), "package"),
    ],
)
def test_malformed_bodies_name_the_field(mutate, field):
    payload = SAMPLES.json("gitea-package-created.json")
    mutate(payload)
    with pytest.raises(PayloadError, match=field):
        parse(gitea_headers(), json.dumps(payload).encode())


@pytest.mark.parametrize("body", [b"", b"{", b"[]"])
def test_unreadable_bodies_are_refused(body):
    with pytest.raises(PayloadError):
        parse(gitea_headers(), body)


# Authentication: bare hex HMAC-SHA256 in X-Gitea-Signature / X-Forgejo-Signature, the
# "sha256=" form in X-Hub-Signature-256; all over the JSON payload.

SECRET = "gitea-hook-secret"
ENDPOINT = Endpoint(name="gitea", source="gitea", secret=SECRET)
BODY = SAMPLES.read("gitea-package-created.json")


def hexmac(body: bytes, secret: str = SECRET) -> str:
    return hex_hmac(body, secret)


def delivery(body: bytes, headers: dict[str, str]) -> Delivery:
    return make_delivery(body, headers)


def gitea_signed(body: bytes, signed_over: bytes | None = None, **extra: str) -> Delivery:
    signature = hexmac(body if signed_over is None else signed_over)
    return delivery(
        body,
        {
            "Content-Type": "application/json",
            "X-Gitea-Signature": signature,
            "X-Gogs-Signature": signature,
            "X-Hub-Signature-256": "sha256=" + signature,
            **extra,
        },
    )


def test_gitea_signature_passes():
    SOURCE.authenticate(gitea_signed(BODY), ENDPOINT)


def test_forgejo_signature_alone_passes():
    SOURCE.authenticate(delivery(BODY, {"X-Forgejo-Signature": hexmac(BODY)}), ENDPOINT)


def test_hub_signature_alone_passes():
    SOURCE.authenticate(delivery(BODY, {"X-Hub-Signature-256": "sha256=" + hexmac(BODY)}), ENDPOINT)


def test_form_delivery_is_checked_against_the_signed_json():
    # deliver.go signs t.PayloadContent (the JSON) even when it posts payload=<url-encoded JSON>.
    form = urlencode({"payload": BODY.decode()}).encode()
    signed = gitea_signed(
        form, signed_over=BODY, **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    SOURCE.authenticate(signed, ENDPOINT)
    signed_raw = gitea_signed(form, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(SOURCE, signed_raw, ENDPOINT, "does not match")


def test_unreadable_form_is_refused_by_authentication():
    signed = gitea_signed(b"other=1", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(SOURCE, signed, ENDPOINT, "payload")


def test_tampered_body_fails():
    tampered = BODY.replace(b'"1.4.2"', b'"6.6.6"')
    assert tampered != BODY
    assert_refused(SOURCE, gitea_signed(tampered, signed_over=BODY), ENDPOINT, "does not match")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Gitea-Signature": hexmac(BODY, "another-secret")},
        # A Gitea hook with no secret still sends the headers, empty or prefix-only.
        {"X-Gitea-Signature": "", "X-Hub-Signature-256": "sha256="},
        {"X-Hub-Signature-256": hexmac(BODY)},
        {"Authorization": f"Bearer {SECRET}"},
        {},
    ],
)
def test_wrong_or_missing_signature_is_refused(headers):
    assert_refused(SOURCE, delivery(BODY, headers), ENDPOINT)


def test_no_secret_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery(BODY, {}))
    insecure = Endpoint(name="gitea", source="gitea", insecure=True)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    SOURCE.authenticate(delivery(b"not a form", form), insecure)
