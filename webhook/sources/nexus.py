"""Sonatype Nexus Repository 3 pushes: "Webhook: Repository" component and asset events.

Format (help.sonatype.com, "Example Headers And Payloads"): ``{timestamp, nodeId, initiator,
repositoryName, action: CREATED|UPDATED|DELETED, component: {format, name, version, ...}}`` for
``rm:repository:component`` (header ``X-Nexus-Webhook-Id``), or ``asset: {format, name, ...}``
for ``rm:repository:asset``. For the docker format the component name is the image and the
version its tag; a manifest asset is named ``v2/<image>/manifests/<reference>``. There is no
digest and no host ("contains no information about the hostname", flux-recv nexus.go).
Deliveries are signed: ``X-Nexus-Webhook-Signature`` is the hex HMAC-SHA1 of the body under the
capability's secret key; ``X-Nexus-Webhook-Delivery`` is a UUID per delivery.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from webhook.auth import hmac_signature
from webhook.sources import (
    UNKNOWN_REGISTRY,
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json_object,
    register,
    require_str,
)

DELIVERY_HEADER = "X-Nexus-Webhook-Delivery"
UPDATES = frozenset({"CREATED", "UPDATED"})
_MANIFEST_ASSET = re.compile(r"/?v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")


def _image_and_tag(event: Mapping[str, object], key: str) -> tuple[str, str] | None:
    """The image and tag a docker component or manifest asset names, or None for other assets."""
    if key == "component":
        return require_str(event, "component.name"), require_str(event, "component.version")
    match = _MANIFEST_ASSET.fullmatch(require_str(event, "asset.name"))
    if match is None:
        return None  # blobs, upload sessions and other non-manifest assets
    return match["name"], match["reference"]


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read one Nexus repository webhook event: a PushEvent for a created or updated docker tag.

    Deletes, other formats, blob assets, digest references and non-repository events (audit)
    are counted as ignored. The registry is left as UNKNOWN_REGISTRY for the endpoint to fill
    in; the digest is always None. Raises PayloadError naming the field when the body cannot
    be read.
    """
    event = load_json_object(body)
    delivery = headers.get(DELIVERY_HEADER) or None
    key = next((k for k in ("component", "asset") if k in event), None)
    if key is None:
        return ParseResult(ignored=1, delivery=delivery)
    item = event[key]
    if not isinstance(item, dict):
        raise PayloadError(f"field {key!r} must be an object")
    action = require_str(event, "action")
    if action not in UPDATES or item.get("format") != "docker":
        return ParseResult(ignored=1, delivery=delivery)
    parts = _image_and_tag(event, key)
    if parts is None or ":" in parts[1]:
        # A version or reference with a colon is a digest: a manifest pushed without a tag.
        return ParseResult(ignored=1, delivery=delivery)
    image, tag = parts
    push = build_event(key, UNKNOWN_REGISTRY, image, tag, None, source="nexus", delivery=delivery)
    return ParseResult(events=[push], delivery=delivery)


SOURCE = register(
    Source(
        name="nexus",
        parse=parse,
        # Nexus signs the body it sends with HMAC-SHA1, hex, no prefix ("Enabling A Repository
        # Webhook Capability"); flux's notification-controller verifies the same way.
        authenticate=hmac_signature([("X-Nexus-Webhook-Signature", "")], digestmod="sha1"),
        needs_registry=True,
    )
)
