"""CNCF distribution (registry v2 and v3, GitLab's registry) notification envelopes.

Format: ``{"events": [...]}`` sent as ``application/vnd.docker.distribution.events.v1+json``
(v2.x) or ``.v2+json`` (v3.x); see distribution's docs/content/about/notifications.md. The
registry posts blob pushes, manifest pushes and pulls alike; only a manifest push that names a
tag is an image update. Authentication is a static header set in the registry's
``notifications.endpoints[].headers``, usually ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from webhook.auth import bearer_token
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json,
    register,
    require,
)
from workers.events import PushEvent

MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
)


def _is_manifest(target: Mapping[str, Any]) -> bool:
    media_type = target.get("mediaType")
    if isinstance(media_type, str) and media_type in MANIFEST_MEDIA_TYPES:
        return True
    # Older registries and some proxies leave mediaType out; the URL still says manifests.
    return "/manifests/" in str(target.get("url", ""))


def _registry_host(event: Mapping[str, Any], index: int) -> str:
    request = event.get("request")
    host = request.get("host") if isinstance(request, dict) else None
    if isinstance(host, str) and host and "/" not in host:
        return host
    url = event.get("target", {}).get("url")
    if isinstance(url, str) and urlsplit(url).netloc:
        return urlsplit(url).netloc
    raise PayloadError(f"events[{index}] names no registry host (request.host or target.url)")


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a distribution envelope: one PushEvent per tagged manifest push, the rest ignored.

    Raises PayloadError naming the field when the body is not an envelope.
    """
    envelope = load_json(body)
    events = require(envelope, "events")
    if not isinstance(events, list):
        raise PayloadError("field 'events' must be a list")
    pushes: list[PushEvent] = []
    ignored = 0
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise PayloadError(f"events[{index}] must be an object")
        action = event.get("action")
        if not isinstance(action, str):
            raise PayloadError(f"missing field 'events[{index}].action'")
        target = event.get("target")
        if not isinstance(target, dict):
            raise PayloadError(f"missing field 'events[{index}].target'")
        tag = target.get("tag")
        if action != "push" or not _is_manifest(target) or not tag:
            ignored += 1
            continue
        if not isinstance(target.get("repository"), str) or not target["repository"]:
            raise PayloadError(f"missing field 'events[{index}].target.repository'")
        pushes.append(
            build_event(
                f"events[{index}]",
                _registry_host(event, index),
                target["repository"],
                tag,
                target.get("digest"),
                source="distribution",
                delivery=event.get("id") if isinstance(event.get("id"), str) else None,
            )
        )
    return ParseResult(events=pushes, ignored=ignored)


SOURCE = register(Source(name="distribution", parse=parse, authenticate=bearer_token))
