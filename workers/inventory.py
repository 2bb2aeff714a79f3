"""What each host runs: its auto-update containers, published by its workers, and the index
from each reference to the hosts that run it, which routing reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from redis import Redis

from workers.podman_runtime import Container, ContainerRuntimeError, Image
from workers.reference import InvalidReferenceError, parse_reference

INVENTORY_KEY = "podhook:inventory:{host}"
# When each host last published its inventory (0: registered, none published yet).
INVENTORY_AT_KEY = "podhook:inventory-at"
# reference -> hosts whose inventory holds it, and host -> its references (to update the first).
REFERENCE_HOSTS_KEY = "podhook:ref-hosts:{reference}"
HOST_REFERENCES_KEY = "podhook:host-refs:{host}"
# An inventory outlives a few missed heartbeats, then disappears with its host's workers.
INVENTORY_TTL_SECONDS = 600


def routed_reference(image_reference: str, aliases: Mapping[str, str] | None = None) -> str | None:
    """The reference a push must name to concern a container created from ``image_reference``:
    ``registry/repository:tag`` with the registry alias map applied, or None when no push can
    (a short name, a reference pinned by digest, or text that is not a reference).
    """
    try:
        ref = parse_reference(image_reference)
    except InvalidReferenceError:
        return None
    if not ref.fully_qualified or ref.digest is not None or ref.tag is None:
        return None
    registry = (aliases or {}).get(ref.registry, ref.registry)
    return f"{registry}/{ref.repository}:{ref.tag}"


class InventorySource(Protocol):
    """What an inventory is collected from: Podman's containers and images."""

    def list_autoupdate_containers(self) -> list[Container]:
        """Running containers that carry the auto-update label."""
        ...

    def get_image(self, name_or_id: str) -> Image:
        """Inspect a local image."""
        ...


def describe_container(
    container: Container,
    aliases: Mapping[str, str] | None = None,
    image: Image | None = None,
) -> dict[str, Any]:
    """One inventory entry: what routing, the CLI and the page show of a container, and the
    digests its image is known by in its own repository (from ``image``)."""
    return {
        "id": container.id,
        "name": container.name,
        "unit": container.unit,
        "image": container.image_reference,
        "reference": routed_reference(container.image_reference, aliases),
        "image_id": container.image_id,
        "policy": container.policy,
        "digests": _digests(container, image) if image is not None else [],
    }


def _digests(container: Container, image: Image) -> list[str]:
    try:
        name = parse_reference(container.image_reference).name
    except InvalidReferenceError:
        return []
    found = {d.partition("@")[2] for d in image.repo_digests if d.partition("@")[0] == name}
    return sorted(found | ({image.digest} if image.digest else set()))


def collect_inventory(
    runtime: InventorySource,
    aliases: Mapping[str, str] | None = None,
    images: dict[str, Image] | None = None,
) -> dict[str, Any]:
    """The host's auto-update containers (name, unit, image reference, routed reference, image
    id, policy, the image's digests): one listing, and an image inspect for each image id not
    in ``images`` (a cache the caller keeps, filled here; an image id's digests only grow, and
    a digest missing from the cache only sends a job to ask Podman). A Podman that does not
    answer yields ``{"error": ...}`` instead of raising.
    """
    images = {} if images is None else images
    try:
        containers = runtime.list_autoupdate_containers()
        for image_id in {c.image_id for c in containers if c.image_id} - set(images):
            images[image_id] = runtime.get_image(image_id)
    except ContainerRuntimeError as error:
        return {"collected_at": time.time(), "error": str(error), "containers": []}
    return {
        "collected_at": time.time(),
        "containers": [
            describe_container(c, aliases, images.get(c.image_id))
            for c in sorted(containers, key=lambda c: c.name)
        ],
    }


def running_digest(
    inventory: Mapping[str, Any] | None,
    reference: str,
    digest: str,
    max_age: float,
    now: float | None = None,
) -> list[dict[str, Any]] | None:
    """The inventory's containers of ``reference`` when every one of them runs ``digest``
    (by the image digests the inventory holds) and the inventory is no older than
    ``max_age`` seconds; else None (ask Podman). A container's image changes only when it
    starts, and every start publishes the inventory again."""
    if not inventory or inventory.get("error"):
        return None
    if (time.time() if now is None else now) - float(inventory.get("collected_at") or 0) > max_age:
        return None
    members = [c for c in inventory.get("containers", []) if c.get("reference") == reference]
    if not members or any(digest not in (c.get("digests") or ()) for c in members):
        return None
    return members


def publish_inventory(redis: Redis, host: str, inventory: dict[str, Any]) -> None:
    """Store a host's inventory for INVENTORY_TTL_SECONDS and update the reference index.

    An inventory that failed to collect (``error``) is stored for display but leaves the index
    and the publication time alone: routing then treats the host's inventory as ageing, and
    pushes reach it once it is older than the allowed age.
    """
    key = INVENTORY_KEY.format(host=host)
    if inventory.get("error"):
        redis.set(key, json.dumps(inventory), ex=INVENTORY_TTL_SECONDS)
        return
    references = {c["reference"] for c in inventory.get("containers", []) if c.get("reference")}
    host_refs = HOST_REFERENCES_KEY.format(host=host)
    previous = {raw.decode() for raw in redis.smembers(host_refs)}  # type: ignore[union-attr]
    pipe = redis.pipeline(transaction=True)
    pipe.set(key, json.dumps(inventory), ex=INVENTORY_TTL_SECONDS)
    for reference in previous - references:
        pipe.srem(REFERENCE_HOSTS_KEY.format(reference=reference), host)
    for reference in references - previous:
        pipe.sadd(REFERENCE_HOSTS_KEY.format(reference=reference), host)
    pipe.delete(host_refs)
    if references:
        pipe.sadd(host_refs, *sorted(references))
    pipe.zadd(INVENTORY_AT_KEY, {host: float(inventory.get("collected_at") or time.time())})
    pipe.execute()


def drop_inventory(redis: Redis, host: str) -> None:
    """Forget a host's inventory and remove it from the reference index."""
    host_refs = HOST_REFERENCES_KEY.format(host=host)
    previous = [raw.decode() for raw in redis.smembers(host_refs)]  # type: ignore[union-attr]
    pipe = redis.pipeline(transaction=True)
    for reference in previous:
        pipe.srem(REFERENCE_HOSTS_KEY.format(reference=reference), host)
    pipe.delete(host_refs, INVENTORY_KEY.format(host=host))
    pipe.zrem(INVENTORY_AT_KEY, host)
    pipe.execute()


def get_inventory(redis: Redis, host: str) -> dict[str, Any] | None:
    """The last inventory a host published, or None when none is current."""
    raw = redis.get(INVENTORY_KEY.format(host=host))
    return json.loads(raw) if raw else None  # type: ignore[arg-type]
