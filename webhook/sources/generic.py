"""A generic push notice for CI pipelines and scripts, which also reads Diun's webhook notifier.

Format: ``{"image": "host/repository:tag", "digest": "sha256:..."}``, ``digest`` optional. Diun's
webhook notifier body (crazy-max/diun ``docs/notif/webhook.md``, ``internal/msg/client.go``
``RenderJSON``) is accepted as is: it has the same ``image`` and ``digest`` fields plus
``diun_version``, ``status`` and others. Authentication is ``Authorization: Bearer <secret>``.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.auth import bearer_token
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    clean_digest,
    load_json_object,
    register,
    require_str,
)
from workers.reference import InvalidReferenceError, parse_reference

# Diun notifies "new" (an image it had not seen, when watch.firstCheckNotif is on) and "update"
# (the tag's digest changed); either can mean the tag differs from what a container runs.
DIUN_PUSH_STATUSES = frozenset({"new", "update"})


def _digest(payload: Mapping[str, object], pinned: str | None) -> str | None:
    given = payload.get("digest")
    if given is None or given == "":
        return clean_digest(pinned)
    digest = clean_digest(given)
    if digest is None:
        raise PayloadError(f"field 'digest' must be sha256:<64 hex> or sha512:<128 hex>: {given!r}")
    if pinned is not None and pinned != digest:
        raise PayloadError(f"field 'digest' ({digest}) differs from the digest in 'image'")
    return digest


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a generic or Diun notice: one PushEvent for the tag named by ``image``.

    ``image`` must be fully qualified (``docker.io/library/nginx:1.27``, not ``nginx:1.27``):
    Podman resolves short names through registries.conf search lists, so guessing ``docker.io``
    could name an image no container runs. A missing tag means ``latest``. Diun notices other
    than ``new`` and ``update`` count as one ignored event. Raises PayloadError naming the field
    for a missing or unqualified image, an image pinned by digest alone, or a malformed digest.
    """
    payload = load_json_object(body)
    status = payload.get("status")
    if "diun_version" in payload and not (isinstance(status, str) and status in DIUN_PUSH_STATUSES):
        return ParseResult(ignored=1)
    image = require_str(payload, "image")
    try:
        ref = parse_reference(image)
    except InvalidReferenceError as error:
        raise PayloadError(f"field 'image': {error}") from None
    if not ref.fully_qualified:
        raise PayloadError(
            f"field 'image' ({image!r}) names no registry host; "
            f"send the full reference, such as {ref.registry}/{ref.repository}:{ref.tag or 'tag'}"
        )
    if ref.tag is None:
        raise PayloadError(
            f"field 'image' ({image!r}) is pinned by digest only; name the tag that was pushed"
        )
    digest = _digest(payload, ref.digest)
    event = build_event(
        "field 'image'", ref.registry, ref.repository, ref.tag, digest, source="generic"
    )
    return ParseResult(events=[event])


SOURCE = register(Source(name="generic", parse=parse, authenticate=bearer_token))
