"""Test doubles for the decision logic only: a Podman and a systemd held in memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from workers.podman_runtime import Container, ContainerRuntimeError, Health, Image
from workers.systemd_units import UnitState


class FakeRuntime:
    """Local images by id, tags pointing at them, a registry to pull from, running containers."""

    def __init__(self) -> None:
        self.images: dict[str, Image] = {}
        self.tags: dict[str, str] = {}
        self.registry: dict[str, Image] = {}
        self.containers: list[Container] = []
        self.pulls: list[str] = []
        self.pull_error: str | None = None
        # Health check statuses by image id, one per run (the last one repeats).
        self.health: dict[str, list[str]] = {}

    def add_image(self, image_id: str, *repo_digests: str) -> Image:
        image = Image(id=image_id, repo_digests=tuple(repo_digests))
        self.images[image_id] = image
        return image

    def run(self, name: str, reference: str, image_id: str, **labels: str) -> Container:
        labels.setdefault("io.containers.autoupdate", "registry")
        container = Container(
            id=f"id-{name}", name=name, image_reference=reference, image_id=image_id, labels=labels
        )
        self.tags[reference] = image_id
        self.containers.append(container)
        return container

    def list_autoupdate_containers(self) -> list[Container]:
        return list(self.containers)

    def get_image(self, name_or_id: str) -> Image:
        image_id = self.tags.get(name_or_id, name_or_id)
        if image_id not in self.images:
            raise ContainerRuntimeError(f"inspecting image {name_or_id}: no such image")
        return self.images[image_id]

    def pull(self, reference: str, authfile: str | None = None) -> Image:
        self.pulls.append(reference)
        if self.pull_error:
            raise ContainerRuntimeError(f"pulling {reference}: {self.pull_error}")
        image = self.registry[reference]
        self.images[image.id] = image
        self.tags[reference] = image.id
        return image

    def tag(self, image_id: str, reference: str) -> None:
        self.tags[reference] = image_id

    def check_health(self, container: str) -> Health | None:
        [image_id] = [c.image_id for c in self.containers if c.name == container]
        statuses = self.health.get(image_id)
        if not statuses:
            return None
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return Health(status, "cat /healthy", "" if status == "healthy" else "no /healthy")

    def recreate_unit(self, unit: str) -> None:
        """What a `--new` unit's restart does: recreate its containers from their references."""
        self.containers = [
            replace(c, image_id=self.tags[c.image_reference]) if c.unit == unit else c
            for c in self.containers
        ]


class FakeUnits:
    """Units whose restart recreates their containers; images listed in ``broken`` crash."""

    def __init__(self, runtime: FakeRuntime, *, recreates: bool = True) -> None:
        self.runtime = runtime
        self.recreates = recreates
        self.restarts: list[str] = []
        self.resets: list[str] = []
        self.broken: set[str] = set()
        self.states: dict[str, UnitState] = {}

    def restart(self, unit: str, timeout: float) -> str:
        self.restarts.append(unit)
        if self.recreates:
            self.runtime.recreate_unit(unit)
        running = {c.image_id for c in self.runtime.containers if c.unit == unit}
        if running & self.broken:
            self.states[unit] = UnitState("failed", "failed", 0)
            return "done"
        self.states[unit] = UnitState("active", "running", 0)
        return "done"

    def get_state(self, unit: str) -> UnitState:
        return self.states.get(unit, UnitState("active", "running", 0))

    def reset_failed(self, unit: str) -> None:
        self.resets.append(unit)


class FakeLocks:
    """Records which units were locked, in order."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.kept: dict[str, float] = {}

    @contextlib.contextmanager
    def hold(self, unit: str) -> Iterator[None]:
        self.held.append(unit)
        yield

    def keep(self, unit: str, seconds: float) -> None:
        self.kept[unit] = seconds
