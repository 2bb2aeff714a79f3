"""The push event: the one shape every registry webhook is normalized to, and the job payload."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.reference import InvalidReferenceError, normalize_registry, parse_reference

# OCI image-spec descriptor digest grammar; sha256 and sha512 are what registries send.
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


class EventError(ValueError):
    """Raised when the parts of a push event do not form a valid image reference."""


@dataclass(frozen=True)
class PushEvent:
    """A tag of a repository now points at new content.

    ``registry`` is a canonical host (``docker.io`` for Docker Hub), ``repository`` a normalized
    path (``library/nginx``), ``digest`` the pushed manifest digest, or ``None`` when the sender
    does not say. ``source`` and ``delivery`` say where the event came from, for the audit trail.
    The event is a hint: workers never pull anything named by it, only containers' own references.
    """

    registry: str
    repository: str
    tag: str
    digest: str | None = None
    source: str = ""
    delivery: str | None = None
    received_at: float | None = field(default=None, compare=False)

    @property
    def reference(self) -> str:
        """``registry/repository:tag``, the reference the push updated."""
        return f"{self.registry}/{self.repository}:{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PushEvent:
        """Rebuild an event from ``to_dict`` output, validating it again."""
        return make_event(
            registry=data["registry"],
            repository=data["repository"],
            tag=data["tag"],
            digest=data.get("digest"),
            source=data.get("source", ""),
            delivery=data.get("delivery"),
            received_at=data.get("received_at"),
        )


def make_event(
    registry: str,
    repository: str,
    tag: str,
    digest: str | None = None,
    *,
    source: str = "",
    delivery: str | None = None,
    received_at: float | None = None,
) -> PushEvent:
    """Build a normalized PushEvent from the parts a webhook names.

    The registry host is canonicalized and the repository normalized through the reference
    parser (so ``docker.io`` + ``nginx`` becomes ``docker.io/library/nginx``). Raises EventError
    when the parts do not form a valid reference or the digest is malformed.
    """
    host = normalize_registry(registry or "")
    if not host:
        raise EventError("the event names no registry host")
    if not tag:
        raise EventError("the event names no tag")
    try:
        ref = parse_reference(f"{host}/{repository.strip('/')}:{tag}")
    except InvalidReferenceError as error:
        raise EventError(str(error)) from error
    if not ref.fully_qualified:
        raise EventError(f"registry host {registry!r} is not a host name")
    if digest is not None and not DIGEST_PATTERN.fullmatch(digest):
        raise EventError(f"digest {digest!r} is not of the form algorithm:hex")
    assert ref.tag is not None
    return PushEvent(
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        digest=digest,
        source=source,
        delivery=delivery,
        received_at=received_at,
    )
