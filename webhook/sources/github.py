"""GitHub Packages (ghcr.io) webhooks: the ``registry_package`` and ``package`` events.

Format: docs.github.com "Webhook events and payloads" (``package``, ``registry_package``) and the
octokit/webhooks payload examples ``payload-examples/api.github.com/{registry_package,package}/
published.docker.payload.json``; real captures in JRoy/disgit#3 and octokit/webhooks.js#646.
The body is JSON or, when the hook's content type is form, ``payload=<url-encoded JSON>``. GitHub
signs the raw body: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`` (docs.github.com
"Validating webhook deliveries").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.auth import hmac_signature
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    clean_digest,
    load_json_or_form,
    register,
    require,
    require_str,
)

PACKAGE_EVENTS = frozenset({"registry_package", "package"})
PUSH_ACTIONS = frozenset({"published", "updated"})
# Real deliveries say "CONTAINER"; octokit's example says ecosystem "docker" (the retired
# docker.pkg.github.com registry used that name too).
CONTAINER_TYPES = frozenset({"container", "docker"})
DEFAULT_HOST = "ghcr.io"


def _is_container(package: Mapping[str, Any]) -> bool:
    kinds = {str(package.get(key, "")).lower() for key in ("package_type", "ecosystem")}
    return bool(kinds & CONTAINER_TYPES)


def _reference(package: Mapping[str, Any]) -> tuple[str, str]:
    """The registry host and repository of a package, lower-cased as ghcr.io serves them."""
    # package_version.package_url is the pull reference ("ghcr.io/<owner>/<name>:<tag>", with an
    # empty tag when untagged); it also gives GHES hosts. registry.url is no use: it reads
    # "https://CONTAINER.pkg.github.com/<owner>", which is not a registry.
    version = package.get("package_version")
    url = version.get("package_url") if isinstance(version, dict) else None
    if isinstance(url, str) and "/" in url:
        name = url.rsplit(":", 1)[0] if url.rfind(":") > url.rfind("/") else url
        host, _, path = name.partition("/")
        if host and path:
            return host.lower(), path.lower()
    owner = require_str(package, "owner.login")
    name = require_str(package, "name")
    return DEFAULT_HOST, f"{owner}/{name}".lower()


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a GitHub package event: one PushEvent for a tagged container version published.

    Other events (``ping`` included), other actions, other package types, and untagged versions
    (``container_metadata.tag.name == ""``, each platform manifest of a multi-arch push) count as
    one ignored event. ``delivery`` is ``X-GitHub-Delivery``. Raises PayloadError naming the
    header or field when the delivery is not a GitHub package event.
    """
    delivery = headers.get("X-GitHub-Delivery") or None
    event_name = headers.get("X-GitHub-Event")
    if not event_name:
        raise PayloadError("missing header 'X-GitHub-Event'")
    if event_name not in PACKAGE_EVENTS:
        return ParseResult(ignored=1, delivery=delivery)
    payload = load_json_or_form(headers, body)
    action = require_str(payload, "action")
    package = require(payload, event_name)
    if not isinstance(package, dict):
        raise PayloadError(f"field {event_name!r} must be an object")
    if action not in PUSH_ACTIONS or not _is_container(package):
        return ParseResult(ignored=1, delivery=delivery)

    base = f"{event_name}.package_version.container_metadata"
    tag = require(payload, f"{base}.tag.name")
    if not isinstance(tag, str):
        raise PayloadError(f"field '{base}.tag.name' must be a string")
    if not tag:
        return ParseResult(ignored=1, delivery=delivery)
    metadata = require(payload, base)
    manifest = metadata.get("manifest")
    digest = manifest.get("digest") if isinstance(manifest, dict) else None
    digest = clean_digest(digest) or clean_digest(metadata["tag"].get("digest"))
    registry, repository = _reference(package)
    event = build_event(
        f"{event_name}.package_version",
        registry,
        repository,
        tag,
        digest,
        source="github",
        delivery=delivery,
    )
    return ParseResult(events=[event], delivery=delivery)


SOURCE = register(
    Source(
        name="github",
        parse=parse,
        authenticate=hmac_signature([("X-Hub-Signature-256", "sha256=")]),
    )
)
