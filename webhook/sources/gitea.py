"""Gitea and Forgejo ``package`` webhooks for their built-in container registry.

Format: go-gitea/gitea ``modules/structs/hook.go`` (``PackagePayload``), ``modules/structs/
package.go`` (``Package``), ``services/convert/package.go`` (``ToPackage``) and
``models/packages/descriptor.go`` (``VersionHTMLURL``); Forgejo sends the same body. Headers and
signing are in ``services/webhook/deliver.go``: ``X-Gitea-Signature`` / ``X-Forgejo-Signature``
hold the bare hex HMAC-SHA256 and ``X-Hub-Signature-256`` the ``sha256=`` form, all computed over
the JSON payload, even when the hook sends it form-encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from webhook.auth import AuthError, hmac_signature
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import ParseResult, PayloadError, Source, load_json, register, require_str
from workers.events import EventError, make_event

# Gitea sends its own, Gogs' and GitHub's header names; Forgejo adds X-Forgejo-* with the same
# values (services/webhook/deliver.go).
EVENT_HEADERS = ("X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event", "X-GitHub-Event")
DELIVERY_HEADERS = (
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "X-Gogs-Delivery",
    "X-GitHub-Delivery",
)
FORM_TYPE = "application/x-www-form-urlencoded"

_check_signature = hmac_signature(
    [("X-Gitea-Signature", ""), ("X-Forgejo-Signature", ""), ("X-Hub-Signature-256", "sha256=")]
)


def _is_form(headers: Mapping[str, str]) -> bool:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower() == FORM_TYPE


def _json_bytes(headers: Mapping[str, str], body: bytes) -> bytes:
    """The JSON payload of a delivery: the body, or the ``payload`` field of a form body."""
    if not _is_form(headers):
        return body
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as error:
        raise PayloadError(f"form body is not UTF-8 url-encoded: {error}") from None
    values = form.get("payload", [])
    if len(values) != 1:
        raise PayloadError("form body must have exactly one field 'payload'")
    return values[0].encode("utf-8")


def authenticate(delivery: Delivery, endpoint: Endpoint) -> None:
    """Check the Gitea/Forgejo HMAC-SHA256 signature of a delivery under the endpoint's secret.

    For a form-encoded delivery the signature covers the ``payload`` field, not the raw body
    (deliver.go signs ``t.PayloadContent``), so that field is what is checked. Raises AuthError
    when the signature is missing or wrong, or when no secret is set and the endpoint is not
    insecure.
    """
    if endpoint.secret and _is_form(delivery.headers):
        try:
            delivery = dataclasses.replace(
                delivery, body=_json_bytes(delivery.headers, delivery.body)
            )
        except PayloadError as error:
            raise AuthError(f"cannot read the signed payload: {error}") from None
    _check_signature(delivery, endpoint)


def _first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a Gitea/Forgejo delivery: one PushEvent for a container tag created.

    The repository is ``package.owner.login/package.name`` lower-cased, the tag is
    ``package.version``, the host is the host of ``package.html_url`` (Gitea's ROOT_URL, where its
    registry answers ``/v2/``); the digest is always ``None``. Other events, deletions, other
    package types, and versions that are digests (a manifest pushed by digest, such as each
    platform manifest of a multi-arch push) count as one ignored event. ``delivery`` is
    ``X-Gitea-Delivery`` / ``X-Forgejo-Delivery``. Raises PayloadError naming the header or field
    when the delivery is not a Gitea webhook.
    """
    delivery = _first_header(headers, DELIVERY_HEADERS)
    event_name = _first_header(headers, EVENT_HEADERS)
    if event_name is None:
        raise PayloadError("missing header 'X-Gitea-Event' (or 'X-Forgejo-Event')")
    if event_name != "package":
        return ParseResult(ignored=1, delivery=delivery)
    payload = load_json(_json_bytes(headers, body))
    action = require_str(payload, "action")
    package_type = require_str(payload, "package.type")
    if action != "created" or package_type != "container":
        return ParseResult(ignored=1, delivery=delivery)
    version = require_str(payload, "package.version")
    # A tag cannot hold ':' (distribution reference grammar), so a version with one is the
    # digest of a manifest pushed by digest (routers/api/packages/container/manifest.go).
    if ":" in version:
        return ParseResult(ignored=1, delivery=delivery)
    owner = require_str(payload, "package.owner.login")
    name = require_str(payload, "package.name")
    html_url = require_str(payload, "package.html_url")
    host = urlsplit(html_url).netloc
    if not host:
        raise PayloadError(f"field 'package.html_url' names no host: {html_url!r}")
    try:
        event = make_event(
            host, f"{owner}/{name}".lower(), version, None, source="gitea", delivery=delivery
        )
    except EventError as error:
        raise PayloadError(f"package: {error}") from None
    return ParseResult(events=[event], delivery=delivery)


SOURCE = register(Source(name="gitea", parse=parse, authenticate=authenticate))
