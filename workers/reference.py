"""Parse container image references the way Podman and the distribution spec read them."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

# Docker Hub answers to several names; containers and webhooks may use any of them.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

# Grammar from distribution/reference (reference.go): path components are lower-case
# alphanumerics joined by '.', '_', '__' or runs of '-'; tags are up to 128 word characters.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
)


class InvalidReferenceError(ValueError):
    """Raised for text that is not a valid image reference."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference.

    ``registry`` and ``repository`` are normalized (``docker.io`` and ``library/`` filled in);
    ``tag`` is ``None`` only for a reference pinned by digest alone. ``fully_qualified`` is
    false for short names such as ``app:1``, which Podman resolves through its search list.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    fully_qualified: bool

    @property
    def name(self) -> str:
        """The repository with its registry, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def names_same_tag(self, other: ImageRef) -> bool:
        """Whether both references name the same registry, repository and tag."""
        return (
            self.registry == other.registry
            and self.repository == other.repository
            and self.tag == other.tag
        )


def normalize_registry(host: str) -> str:
    """Return the canonical name of a registry host (Docker Hub's aliases become docker.io)."""
    host = host.strip().lower()
    return DEFAULT_REGISTRY if host in _DOCKER_HUB_ALIASES else host


def _looks_like_host(component: str) -> bool:
    # Podman's rule (containers/image docker/reference): the first component names a registry
    # when it has a dot or a port, or is "localhost".
    return "." in component or ":" in component or component == "localhost"


def parse_reference(text: str) -> ImageRef:
    """Parse an image reference such as ``registry:5000/team/app:1.2@sha256:...``.

    Missing parts get Podman's defaults: registry ``docker.io``, the ``library/`` namespace
    for single-component Docker Hub names, and tag ``latest`` unless a digest pins the image.
    Raises InvalidReferenceError naming what is wrong.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError("empty image reference")
    text = text.strip()
    if "://" in text:
        raise InvalidReferenceError(f"image reference {text!r} must not have a URL scheme")

    remainder, digest = text, None
    if "@" in text:
        remainder, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(
                f"image reference {text!r} has an invalid digest {digest!r}"
            )

    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(f"image reference {text!r} has an invalid tag {tag!r}")

    parts = remainder.split("/")
    fully_qualified = len(parts) > 1 and _looks_like_host(parts[0])
    if fully_qualified:
        registry, path = parts[0], parts[1:]
        if not _HOST.fullmatch(registry):
            raise InvalidReferenceError(
                f"image reference {text!r} has an invalid registry {registry!r}"
            )
        registry = normalize_registry(registry)
    else:
        registry, path = DEFAULT_REGISTRY, parts

    for component in path:
        if not _COMPONENT.fullmatch(component):
            raise InvalidReferenceError(
                f"image reference {text!r} has an invalid path component {component!r}"
            )
    if registry == DEFAULT_REGISTRY and len(path) == 1:
        path = ["library", *path]

    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(
        registry=registry,
        repository="/".join(path),
        tag=tag,
        digest=digest,
        fully_qualified=fully_qualified,
    )
