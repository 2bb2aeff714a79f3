"""Azure Container Registry pushes: native ACR webhooks, and ACR events delivered by Event Grid.

Native webhooks (learn.microsoft.com, container-registry-webhook-reference) post one flat
object per event: ``{id, timestamp, action, target: {mediaType, digest, repository, tag},
request: {host, ...}}``; actions are ``push``, ``delete``, ``chart_push``, ``chart_delete``,
``quarantine`` and the portal's ``ping``. ACR adds no signature and no header beyond the custom
headers configured on the webhook, so the secret travels in such a header or in the URL.

Event Grid (event-grid/event-schema-container-registry) posts a JSON array of events whose
``data`` is the native event; ``eventType`` (Event Grid schema) or ``type`` (CloudEvents 1.0
schema) is ``Microsoft.ContainerRegistry.ImagePushed``. The Event Grid schema's subscription
validation event (event-grid/webhook-event-delivery) must be answered with its
``validationCode``. A CloudEvents-schema subscription may also post a single structured event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.auth import any_of, header_token, url_secret
from webhook.sources import ParseResult, PayloadError, Source, build_event, load_json, register
from workers.events import PushEvent

# The header podhook reads the secret from unless the endpoint's ``header`` names another one.
DEFAULT_HEADER = "Authorization"

IMAGE_PUSHED = frozenset(
    {
        "Microsoft.ContainerRegistry.ImagePushed",
        # The 2018 Event Grid schema page (and events of that era) used the bare name.
        "ImagePushed",
    }
)
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"


def _text(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) and value else None


def _push_event(native: Any, prefix: str, delivery: str | None) -> PushEvent | None:
    """The PushEvent of one native ACR event, or None when it is not a tagged image push.

    ``prefix`` is where the event sits in the body (``""``, or ``"[0].data."``), for messages.
    """
    if not isinstance(native, dict):
        raise PayloadError(f"field {prefix.rstrip('.') or 'body'!r} must be an object")
    action = native.get("action")
    if not isinstance(action, str):
        raise PayloadError(f"missing field '{prefix}action'")
    if action != "push":
        return None
    target = native.get("target")
    if not isinstance(target, dict):
        raise PayloadError(f"missing field '{prefix}target'")
    tag = _text(target, "tag")
    if tag is None:
        # Platform manifests of a multi-arch push arrive "without tag"
        # (dotnet/sdk-container-builds#456); the index push that follows carries it.
        return None
    repository = _text(target, "repository")
    if repository is None:
        raise PayloadError(f"missing field '{prefix}target.repository'")
    request = native.get("request")
    host = _text(request, "host") if isinstance(request, dict) else None
    if host is None:
        raise PayloadError(f"missing field '{prefix}request.host'")
    return build_event(
        prefix.rstrip(".") or "body",
        host,
        repository,
        tag,
        target.get("digest"),
        source="acr",
        delivery=delivery,
    )


def _parse_grid_events(items: list[Any]) -> ParseResult:
    pushes: list[PushEvent] = []
    ignored = 0
    for index, item in enumerate(items):
        where = f"[{index}]"
        if not isinstance(item, dict):
            raise PayloadError(f"event {where} must be an object")
        kind = _text(item, "eventType") or _text(item, "type")
        if kind is None:
            raise PayloadError(f"missing field '{where}.eventType' (or '{where}.type')")
        if kind == VALIDATION_EVENT:
            data = item.get("data")
            code = _text(data, "validationCode") if isinstance(data, dict) else None
            if code is None:
                raise PayloadError(f"missing field '{where}.data.validationCode'")
            return ParseResult(reply={"validationResponse": code})
        event = None
        if kind in IMAGE_PUSHED:
            event = _push_event(item.get("data"), f"{where}.data.", _text(item, "id"))
        if event is None:
            ignored += 1
        else:
            pushes.append(event)
    # A batch has no id of its own; a single-event delivery is identified by its event.
    delivery = _text(items[0], "id") if len(items) == 1 else None
    return ParseResult(events=pushes, ignored=ignored, delivery=delivery)


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a native ACR webhook or an Event Grid delivery of ACR events.

    Returns one PushEvent per tagged image push (host from ``request.host``), counts every other
    event as ignored, and answers Event Grid's subscription validation with ``reply``. Raises
    PayloadError naming the field when the body is neither format.
    """
    payload = load_json(body)
    if isinstance(payload, list):
        return _parse_grid_events(payload)
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object or an array of Event Grid events")
    if "specversion" in payload or "eventType" in payload:
        return _parse_grid_events([payload])
    delivery = _text(payload, "id")
    event = _push_event(payload, "", delivery)
    if event is None:
        return ParseResult(ignored=1, delivery=delivery)
    return ParseResult(events=[event], delivery=delivery)


SOURCE = register(
    Source(
        name="acr",
        parse=parse,
        authenticate=any_of(header_token(DEFAULT_HEADER), url_secret),
    )
)
