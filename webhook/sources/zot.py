"""zot registry pushes: CloudEvents from zot's events extension, HTTP sink, binary mode.

zot (pkg/extensions/events; zotregistry.dev docs/articles/events.md) sends each event with the
CloudEvents Go SDK in binary mode: the attributes are ``ce-*`` headers (``ce-type``, ``ce-id``,
``ce-source``...) and the body is the event data ``{name, reference, digest, mediaType,
manifest, actor?, request?}``. Types are ``<prefix>.image.updated``, ``.image.deleted``,
``.image.lint_failed``, ``.image.scanned`` and ``.repository.created``, where the prefix is
``zotregistry`` unless the ``typePrefix`` setting changes it; there is no "image created" type,
a new tag is an update. The data names no registry host. A structured-mode event
(``application/cloudevents+json``) is read too, for relays that re-encode the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.auth import header_token
from webhook.sources import (
    UNKNOWN_REGISTRY,
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json,
    register,
    require_str,
)

# Matched as a suffix: zot's ``typePrefix`` setting replaces the ``zotregistry`` namespace.
IMAGE_UPDATED_SUFFIX = ".image.updated"


def _event_parts(headers: Mapping[str, str], payload: Any) -> tuple[str, Any, str | None]:
    """The CloudEvent's type, data and id, from binary mode (headers) or structured mode."""
    kind = headers.get("ce-type")
    if kind:
        return kind, payload, headers.get("ce-id") or None
    if isinstance(payload, dict) and "specversion" in payload:
        event_id = payload.get("id")
        return (
            require_str(payload, "type"),
            payload.get("data"),
            event_id if isinstance(event_id, str) else None,
        )
    raise PayloadError("missing header 'ce-type' (zot sends CloudEvents in binary mode)")


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read one zot CloudEvent: a PushEvent when an image tag was updated, else ignored.

    The repository is ``name`` and the tag ``reference``; an update by digest (a platform
    manifest of a multi-arch push) is ignored, as are all other event types. The registry is
    left as UNKNOWN_REGISTRY for the endpoint to fill in. Raises PayloadError naming the header
    or field when the event cannot be read.
    """
    kind, data, delivery = _event_parts(headers, load_json(body))
    if not kind.endswith(IMAGE_UPDATED_SUFFIX):
        return ParseResult(ignored=1, delivery=delivery)
    if not isinstance(data, dict):
        raise PayloadError("event data must be a JSON object")
    name = require_str(data, "name")
    reference = require_str(data, "reference")
    if ":" in reference:
        # A digest reference: zot emits one per manifest PUT by digest (README of the samples,
        # imagestore.go), and the tagged index event follows.
        return ParseResult(ignored=1, delivery=delivery)
    push = build_event(
        "fields 'name'/'reference'",
        UNKNOWN_REGISTRY,
        name,
        reference,
        data.get("digest"),
        source="zot",
        delivery=delivery,
    )
    return ParseResult(events=[push], delivery=delivery)


SOURCE = register(
    Source(name="zot", parse=parse, authenticate=header_token("Authorization"), needs_registry=True)
)
