"""What each host runs: its auto-update containers, published by its workers as they beat."""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from workers.podman_runtime import ContainerRuntime, ContainerRuntimeError

INVENTORY_KEY = "podhook:inventory:{host}"
# An inventory outlives a few missed heartbeats, then disappears with its host's workers.
INVENTORY_TTL_SECONDS = 600


def collect_inventory(runtime: ContainerRuntime) -> dict[str, Any]:
    """The host's auto-update containers (name, unit, image reference and id, policy).

    A Podman that does not answer yields ``{"error": ...}`` instead of raising.
    """
    try:
        containers = runtime.list_autoupdate_containers()
    except ContainerRuntimeError as error:
        return {"collected_at": time.time(), "error": str(error), "containers": []}
    return {
        "collected_at": time.time(),
        "containers": [
            {
                "id": c.id,
                "name": c.name,
                "unit": c.unit,
                "image": c.image_reference,
                "image_id": c.image_id,
                "policy": c.policy,
            }
            for c in sorted(containers, key=lambda c: c.name)
        ],
    }


def publish_inventory(redis: Redis, host: str, inventory: dict[str, Any]) -> None:
    """Store a host's inventory for INVENTORY_TTL_SECONDS."""
    redis.set(INVENTORY_KEY.format(host=host), json.dumps(inventory), ex=INVENTORY_TTL_SECONDS)


def get_inventory(redis: Redis, host: str) -> dict[str, Any] | None:
    """The last inventory a host published, or None when none is current."""
    raw = redis.get(INVENTORY_KEY.format(host=host))
    return json.loads(raw) if raw else None
