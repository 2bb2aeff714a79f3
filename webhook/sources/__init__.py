"""The registry of webhook sources: one adapter module per registry format, looked up by name."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from webhook.auth import Authenticator
from workers.events import DIGEST_PATTERN, EventError, PushEvent, make_event


class PayloadError(ValueError):
    """Raised by an adapter for a body it cannot read; the message names the missing field."""


@dataclass(frozen=True)
class ParseResult:
    """What one delivery yields: the image pushes in it, and how many other events it held.

    ``delivery`` is the sender's id for the whole delivery when it has one (GitHub's
    ``X-GitHub-Delivery``, say); a delivery id seen before is not queued again.
    ``reply`` is a body the sender expects back instead of the usual summary (Event Grid's
    subscription validation handshake), or ``None``.
    """

    events: list[PushEvent] = field(default_factory=list)
    ignored: int = 0
    delivery: str | None = None
    reply: dict[str, Any] | None = None


Parser = Callable[[Mapping[str, str], bytes], ParseResult]


@dataclass(frozen=True)
class Source:
    """A registry webhook format: its parser and how its deliveries are authenticated.

    ``needs_registry`` marks formats whose payload does not name the registry host; their
    endpoints must configure one, and the parser leaves ``PushEvent.registry`` as
    ``UNKNOWN_REGISTRY`` for the route to fill in.
    """

    name: str
    parse: Parser
    authenticate: Authenticator
    needs_registry: bool = False


# Placeholder host for formats that carry none; replaced by the endpoint's configured registry.
UNKNOWN_REGISTRY = "registry.invalid"

_SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source to the registry. Raises ValueError if the name is taken."""
    if source.name in _SOURCES:
        raise ValueError(f"webhook source {source.name!r} is registered twice")
    _SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source | None:
    """The registered source of that name, or None."""
    _load_adapters()
    return _SOURCES.get(name)


def source_names() -> list[str]:
    """The names of every registered source, sorted."""
    _load_adapters()
    return sorted(_SOURCES)


_loaded = False


def _load_adapters() -> None:
    # Each adapter module registers itself on import; importing them all here keeps
    # "adding a registry" to one new module.
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def load_json(body: bytes) -> Any:
    """Decode a JSON body. Raises PayloadError when it is not UTF-8 JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        raise PayloadError("body is JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise PayloadError(f"body is not valid JSON: {error}") from None


def load_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON body that must be an object. Raises PayloadError when it is not."""
    payload = load_json(body)
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object")
    return payload


FORM_TYPE = "application/x-www-form-urlencoded"


def json_payload(headers: Mapping[str, str], body: bytes) -> bytes:
    """The JSON of a delivery: the body itself, or the ``payload`` field of a form-encoded body.

    GitHub and Gitea hooks set to the form content type post ``payload=<url-encoded JSON>``. A
    body is read as a form when its Content-Type says so or when it starts with ``payload=``,
    which no JSON body can. Raises PayloadError when a form body is not UTF-8 url-encoded or has
    no single ``payload`` field.
    """
    content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type != FORM_TYPE and not body.startswith(b"payload="):
        return body
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as error:
        raise PayloadError(f"form body is not UTF-8 url-encoded: {error}") from None
    values = form.get("payload", [])
    if len(values) != 1:
        raise PayloadError("form body must have exactly one field 'payload'")
    return values[0].encode("utf-8")


def load_json_or_form(headers: Mapping[str, str], body: bytes) -> Any:
    """Decode a JSON body, or the JSON in the ``payload`` field of a form-encoded one.

    Raises PayloadError when the body is neither, or when the form has no single ``payload``.
    """
    return load_json(json_payload(headers, body))


def clean_digest(value: Any) -> str | None:
    """A manifest digest as ``algorithm:hex``, or None when the sender gave none or a malformed one.

    Published samples carry truncated digests and placeholder strings; the digest is only a hint
    that lets a worker skip a pull, so a bad one is dropped rather than refused.
    """
    if isinstance(value, str) and DIGEST_PATTERN.fullmatch(value.strip()):
        return value.strip()
    return None


# Delivery ids seen: UUIDs, ULIDs, Event Grid and EventBridge ids, ARN-like strings.
MAX_DELIVERY_ID = 200


def clean_delivery_id(value: Any) -> str | None:
    """A sender's delivery id fit to be a Redis key and a log field, or None.

    The id only keeps a delivery from being queued twice, so one that is not a string of 1 to
    MAX_DELIVERY_ID printable characters (a lone UTF-16 surrogate, which no Redis key can
    hold; control characters; a megabyte of text) is dropped rather than refused: the pushes
    of the delivery still count.
    """
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not 0 < len(value) <= MAX_DELIVERY_ID or not value.isprintable():
        return None
    return value


def require(mapping: Any, path: str) -> Any:
    """Follow a dotted path of keys (``event_data.repository.name``) through nested objects.

    Raises PayloadError naming the first missing or mistyped field.
    """
    value = mapping
    walked = []
    for key in path.split("."):
        walked.append(key)
        if not isinstance(value, dict) or key not in value:
            raise PayloadError(f"missing field {'.'.join(walked)!r}")
        value = value[key]
    return value


def require_str(mapping: Any, path: str) -> str:
    """Like ``require``, for a field that must be a non-empty string."""
    value = require(mapping, path)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"field {path!r} must be a non-empty string")
    return value


def build_event(
    where: str,
    registry: str,
    repository: str,
    tag: str,
    digest: Any,
    *,
    source: str,
    delivery: str | None = None,
) -> PushEvent:
    """The PushEvent for these parts, with the digest passed through ``clean_digest``.

    ``where`` says which part of the body the parts came from (``events[0]``, ``field 'image'``).
    Raises PayloadError, prefixed with ``where``, when the parts do not form a valid reference.
    """
    try:
        return make_event(
            registry, repository, tag, clean_digest(digest), source=source, delivery=delivery
        )
    except EventError as error:
        raise PayloadError(f"{where}: {error}") from None
