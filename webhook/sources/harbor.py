"""Harbor webhooks: the "Default" JSON format, the CloudEvents format, and Harbor 1.x ``pushImage``.

Format: goharbor/website ``docs/working-with-projects/project-configuration/configure-webhooks.md``
(payload samples for both formats) and goharbor/harbor ``src/pkg/notifier/formats`` (default.go,
cloudevents.go). A Default body is ``{"type", "occur_at", "operator", "event_data": {...}}``; a
CloudEvents body is a structured CloudEvent whose ``data`` is that same ``event_data``. Harbor
sends its policy's ``auth_header`` verbatim in ``Authorization``; there is no signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.auth import header_token
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json_object,
    register,
    require,
    require_str,
)
from workers.events import PushEvent

# Harbor 2.x Default ``type``, its CloudEvents ``type``, and Harbor 1.x's name for the same event
# (fluxcd/flux-recv test/fixtures/harbor_payload).
PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed", "pushImage"})


def _registry_host(resource_url: str, where: str) -> str:
    # resource_url is ExtURL() with the scheme stripped plus "/repo[:tag|@digest]"; tolerate a
    # scheme anyway in case a proxy or older release leaves it in.
    host, slash, _ = resource_url.split("://", 1)[-1].partition("/")
    if not host or not slash:
        raise PayloadError(f"field {where!r} names no registry host: {resource_url!r}")
    return host


def _is_untagged(tag: Any, digest: Any) -> bool:
    # constructArtifactPayload sets the resource's tag to the digest when the artifact has no tag
    # (a manifest pushed by digest, such as each platform manifest of a multi-arch push).
    return not tag or tag == digest or str(tag).startswith(("sha256:", "sha512:"))


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a Harbor webhook: one PushEvent per tagged resource of an artifact push.

    Pulls, deletes, scans, quota, replication and retention events count as one ignored event
    each; untagged resources of a push count one each. ``delivery`` is the CloudEvents ``id``.
    Raises PayloadError naming the field when the body is not a Harbor webhook.
    """
    payload = load_json_object(body)
    if "specversion" in payload:
        data_key = "data"
        delivery = payload.get("id") if isinstance(payload.get("id"), str) else None
    else:
        data_key = "event_data"
        delivery = None
    event_type = require_str(payload, "type")
    if event_type not in PUSH_TYPES:
        return ParseResult(ignored=1, delivery=delivery)

    repository = require_str(payload, f"{data_key}.repository.repo_full_name")
    resources = require(payload, f"{data_key}.resources")
    if not isinstance(resources, list) or not resources:
        raise PayloadError(f"field '{data_key}.resources' must be a non-empty list")
    pushes: list[PushEvent] = []
    ignored = 0
    for index, resource in enumerate(resources):
        where = f"{data_key}.resources[{index}]"
        if not isinstance(resource, dict):
            raise PayloadError(f"field {where!r} must be an object")
        tag, digest = resource.get("tag"), resource.get("digest")
        if _is_untagged(tag, digest):
            ignored += 1
            continue
        if not isinstance(tag, str):
            raise PayloadError(f"field '{where}.tag' must be a string")
        resource_url = resource.get("resource_url")
        if not isinstance(resource_url, str) or not resource_url:
            raise PayloadError(f"missing field '{where}.resource_url'")
        host = _registry_host(resource_url, f"{where}.resource_url")
        pushes.append(
            build_event(where, host, repository, tag, digest, source="harbor", delivery=delivery)
        )
    return ParseResult(events=pushes, ignored=ignored, delivery=delivery)


SOURCE = register(Source(name="harbor", parse=parse, authenticate=header_token("Authorization")))
