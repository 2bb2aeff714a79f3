"""Google Artifact Registry (and Container Registry) pushes: Pub/Sub messages on topic ``gcr``.

Message data (cloud.google.com/artifact-registry/docs/configure-notifications) is ``{"action":
"INSERT"|"DELETE", "digest": "<host>/<path>@sha256:...", "tag": "<host>/<path>:<tag>"}``.
A push subscription posts ``{"message": {"data": <base64>, "messageId", ...}, "subscription"}``
(pubsub/docs/push); with payload unwrapping (pubsub/docs/payload-unwrapping) the body is the
data itself and the message id, if written, is the ``x-goog-pubsub-message-id`` header. Pub/Sub
cannot add a shared-secret header, so podhook takes the secret from the push endpoint's URL.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from webhook.auth import url_secret
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json,
    load_json_object,
    register,
    require,
    require_str,
)
from workers.reference import InvalidReferenceError, parse_reference

MESSAGE_ID_HEADER = "x-goog-pubsub-message-id"


def _decode_data(message: Mapping[str, Any]) -> Any:
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise PayloadError("missing field 'message.data'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("field 'message.data' is not base64") from None
    try:
        return load_json(raw)
    except PayloadError as error:
        raise PayloadError(f"field 'message.data': {error}") from None


def _unwrap(headers: Mapping[str, str], payload: dict[str, Any]) -> tuple[Any, str | None]:
    """The decoded message data and the message id, from a wrapped or unwrapped push."""
    if "message" not in payload:
        return payload, headers.get(MESSAGE_ID_HEADER) or None
    message = require(payload, "message")
    if not isinstance(message, dict):
        raise PayloadError("field 'message' must be an object")
    data = _decode_data(message)
    # Real push requests carry both spellings (see the flux-recv fixture in tests/payloads/gar).
    message_id = message.get("messageId") or message.get("message_id")
    return data, message_id if isinstance(message_id, str) else None


def _digest_of(value: Any, name: str) -> str | None:
    # The digest field is a full "<host>/<path>@sha256:..." reference; keep it only when it names
    # the same image as the tag.
    if not isinstance(value, str) or "@" not in value:
        return None
    digest_name, _, digest = value.partition("@")
    return digest if digest_name == name else None


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a Pub/Sub push of a registry notification: a PushEvent for an INSERT with a tag.

    Host, repository and tag come from the ``tag`` reference, the digest from the ``digest``
    reference. DELETEs and digest-only INSERTs (untagged manifests) are counted as ignored.
    Raises PayloadError naming the field when the body or message data cannot be read.
    """
    data, delivery = _unwrap(headers, load_json_object(body))
    if not isinstance(data, dict):
        raise PayloadError("message data must be a JSON object")
    action = require_str(data, "action")
    tag_ref = data.get("tag")
    if action != "INSERT" or not tag_ref:
        return ParseResult(ignored=1, delivery=delivery)
    if not isinstance(tag_ref, str):
        raise PayloadError("field 'tag' must be a string")
    name, colon, tag = tag_ref.rpartition(":")
    if not colon or "/" in tag or "@" in tag_ref:
        raise PayloadError(f"field 'tag' is not a <host>/<path>:<tag> reference: {tag_ref!r}")
    try:
        ref = parse_reference(tag_ref)
    except InvalidReferenceError as error:
        raise PayloadError(f"field 'tag': {error}") from None
    if not ref.fully_qualified:
        raise PayloadError(f"field 'tag': {tag_ref!r} names no registry host")
    push = build_event(
        "field 'tag'",
        ref.registry,
        ref.repository,
        tag,
        _digest_of(data.get("digest"), name),
        source="gar",
        delivery=delivery,
    )
    return ParseResult(events=[push], delivery=delivery)


SOURCE = register(Source(name="gar", parse=parse, authenticate=url_secret))
