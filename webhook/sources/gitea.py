"""Gitea and Forgejo ``package`` webhooks for their built-in container registry.

Format: go-gitea/gitea ``modules/structs/hook.go`` (``PackagePayload``), ``modules/structs/
package.go`` (``Package``), ``services/convert/package.go`` (``ToPackage``) and
``models/packages/descriptor.go`` (``VersionHTMLURL``); Forgejo sends the same body. Headers and
signing are in ``services/webhook/deliver.go``: ``X-Gitea-Signature`` / ``X-Forgejo-Signature``
hold the bare hex HMAC-SHA256 and ``X-Hub-Signature-256`` the ``sha256=`` form, all computed over
the JSON payload, even when the hook sends it form-encoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from webhook.auth import hmac_signature
from webhook.endpoints import Delivery
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    json_payload,
    load_json_or_form,
    register,
    require_str,
)

# Gitea sends its own, Gogs' and GitHub's header names; Forgejo adds X-Forgejo-* with the same
# values (services/webhook/deliver.go).
EVENT_HEADERS = ("X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event", "X-GitHub-Event")
DELIVERY_HEADERS = (
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "X-Gogs-Delivery",
    "X-GitHub-Delivery",
)
SIGNATURE_HEADERS = (
    ("X-Gitea-Signature", ""),
    ("X-Forgejo-Signature", ""),
    ("X-Hub-Signature-256", "sha256="),
)


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
    payload = load_json_or_form(headers, body)
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
    repository = f"{owner}/{name}".lower()
    event = build_event(
        "package", host, repository, version, None, source="gitea", delivery=delivery
    )
    return ParseResult(events=[event], delivery=delivery)


def _signed_json(delivery: Delivery) -> bytes:
    # deliver.go signs t.PayloadContent, the JSON, even when it posts it form-encoded.
    return json_payload(delivery.headers, delivery.body)


SOURCE = register(
    Source(
        name="gitea",
        parse=parse,
        authenticate=hmac_signature(SIGNATURE_HEADERS, signed=_signed_json),
    )
)
