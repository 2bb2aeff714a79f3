"""The container engine behind a small interface: list, inspect, pull and tag, over Podman's API."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from workers.authfile import AuthfileError, lookup_credentials
from workers.reference import InvalidReferenceError, parse_reference

AUTOUPDATE_LABEL = "io.containers.autoupdate"
AUTHFILE_LABEL = "io.containers.autoupdate.authfile"
UNIT_LABEL = "PODMAN_SYSTEMD_UNIT"


def _load_podman_py() -> Any:
    """Import podman-py (only where Podman is used: the web app never needs it), with its
    socket closed when a connect fails (podman-py leaves it open, and each attempt on a
    stopped Podman service would leak a descriptor). Returns the ``podman`` package."""
    import podman  # noqa: PLC0415
    from podman.api import uds  # noqa: PLC0415

    if not getattr(uds.UDSSocket, "closes_on_failed_connect", False):

        class ClosingUDSSocket(uds.UDSSocket):  # type: ignore[misc]
            closes_on_failed_connect = True

            def connect(self, **kwargs: Any) -> None:  # type: ignore[override]
                try:
                    super().connect(**kwargs)
                except BaseException:
                    self.close()
                    raise

        uds.UDSSocket = ClosingUDSSocket  # type: ignore[misc]  # looked up by UDSConnection
    return podman


class ContainerRuntimeError(Exception):
    """Raised when the container engine fails; the message names the operation."""


class PolicyRefusedError(ContainerRuntimeError):
    """Raised when a pull is refused by the host's signature policy (containers-policy.json):
    trying again pulls the same refused image, so it is not a passing failure."""


# How containers/image words a refusal by the signature policy (PolicyRequirementError). It
# words a signature it could not fetch the same way: those, by their network or HTTP error,
# are passing failures, retried like a registry that is down.
_POLICY_REFUSAL = "Source image rejected"
_UNREACHABLE = (
    "dial tcp",
    "connection refused",
    "connection reset",
    "i/o timeout",
    "TLS handshake timeout",
    "no such host",
    "EOF",
    "status 5",
)


def _refused_by_policy(message: str) -> bool:
    """Whether a pull error is the signature policy's verdict, not a failure to ask."""
    return _POLICY_REFUSAL in message and not any(words in message for words in _UNREACHABLE)


@dataclass(frozen=True)
class Container:
    """A running container as the update logic needs it."""

    id: str
    name: str
    image_reference: str
    image_id: str
    labels: Mapping[str, str]

    @property
    def policy(self) -> str:
        """The auto-update policy label's value ('' when unset)."""
        return self.labels.get(AUTOUPDATE_LABEL, "")

    @property
    def unit(self) -> str | None:
        """The systemd unit that runs the container, from PODMAN_SYSTEMD_UNIT."""
        return self.labels.get(UNIT_LABEL) or None


@dataclass(frozen=True)
class Image:
    """A local image: its id and the digests it is known by in registries."""

    id: str
    repo_digests: tuple[str, ...]
    digest: str | None = None

    def has_digest(self, repository_name: str, digest: str) -> bool:
        """Whether the image is known as ``repository_name@digest`` (or has that digest)."""
        return f"{repository_name}@{digest}" in self.repo_digests or self.digest == digest


@dataclass(frozen=True)
class Health:
    """The outcome of running a container's health check once: ``status`` is Podman's
    (``healthy``, ``unhealthy``, ``starting``), ``check`` the command, ``output`` what the
    last run printed."""

    status: str
    check: str
    output: str = ""


class ContainerRuntime(Protocol):
    """What the update logic asks of a container engine."""

    def list_autoupdate_containers(self) -> list[Container]:
        """Running containers that carry the auto-update label."""
        ...

    def get_image(self, name_or_id: str) -> Image:
        """Inspect a local image. Raises ContainerRuntimeError."""
        ...

    def pull(self, reference: str, authfile: str | None = None) -> Image:
        """Pull ``reference`` from its registry and return the image it now names."""
        ...

    def tag(self, image_id: str, reference: str) -> None:
        """Point ``reference`` at a local image."""
        ...

    def check_health(self, container: str) -> Health | None:
        """Run the container's health check once; None when it has none."""
        ...


def registry_auth_header(reference: str, authfile: str | None) -> dict[str, str]:
    """The X-Registry-Auth header that pulls ``reference`` with the credentials in
    ``authfile`` (without one: in the files Podman searches, ``default_authfiles()``); ``{}``
    when they hold none, or when ``reference`` is a short name Podman resolves itself.

    The value is Podman's single-auth form (pkg/auth/auth.go, parseSingleAuthHeader): URL-safe
    base64 of JSON with ``username``, ``password`` and ``identitytoken``. Raises
    ContainerRuntimeError naming the authfile or helper that failed, never a secret.
    """
    try:
        image = parse_reference(reference)
    except InvalidReferenceError as error:
        raise ContainerRuntimeError(f"pulling {reference}: {error}") from error
    if not image.fully_qualified:
        return {}  # Podman picks the registry from its search list; there is no key to look up
    try:
        credentials = lookup_credentials(image.name, authfile)
    except AuthfileError as error:
        raise ContainerRuntimeError(f"pulling {reference}: {error}") from error
    if credentials is None:
        return {}
    fields = {
        "username": credentials.username,
        "password": credentials.password,
        "identitytoken": credentials.identity_token,
    }
    encoded = json.dumps({name: value for name, value in fields.items() if value}).encode()
    return {"X-Registry-Auth": base64.urlsafe_b64encode(encoded).decode()}


class PodmanRuntime:
    """ContainerRuntime over the Podman REST API (libpod endpoints) through podman-py."""

    def __init__(self, url: str, timeout: float = 300.0) -> None:
        self.url = url
        podman = _load_podman_py()
        self._errors: tuple[type[BaseException], ...] = (
            podman.errors.APIError,
            podman.errors.PodmanError,
            OSError,
        )
        self._client = podman.PodmanClient(base_url=url, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _call(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = getattr(self._client.api, method)(path, **kwargs)
            response.raise_for_status()
        except self._errors as error:
            raise ContainerRuntimeError(f"{what}: {error}") from error
        return response

    def list_autoupdate_containers(self) -> list[Container]:
        """Running containers labeled io.containers.autoupdate, with their own image reference.

        One request, whatever the number of containers: libpod's list names each container's
        image as it was created (inspect's ``ImageName``, which Podman's own auto-update
        pulls) and its image id, so no container is inspected.
        """
        filters = json.dumps({"label": [AUTOUPDATE_LABEL], "status": ["running"]})
        listed = self._call(
            "listing containers", "get", "/containers/json", params={"filters": filters}
        ).json()
        return [
            Container(
                id=entry["Id"],
                name=(entry.get("Names") or [""])[0].lstrip("/"),
                image_reference=entry.get("Image") or "",
                image_id=entry.get("ImageID") or "",
                labels=dict(entry.get("Labels") or {}),
            )
            for entry in listed
        ]

    def get_image(self, name_or_id: str) -> Image:
        """Inspect a local image by name or id."""
        data = self._call(
            f"inspecting image {name_or_id}", "get", f"/images/{name_or_id}/json"
        ).json()
        return Image(
            id=data["Id"],
            repo_digests=tuple(data.get("RepoDigests") or ()),
            digest=data.get("Digest") or None,
        )

    def pull(self, reference: str, authfile: str | None = None) -> Image:
        """Pull ``reference`` (policy always) and return the image it names afterwards.

        TLS follows registries.conf. Raises ContainerRuntimeError with the registry's message.
        """
        headers = registry_auth_header(reference, authfile)
        response = self._call(
            f"pulling {reference}",
            "post",
            "/images/pull",
            params={"reference": reference, "policy": "always"},
            headers=headers,
            stream=True,
        )
        image_id = None
        for line in response.iter_lines():
            if not line:
                continue
            report = json.loads(line)
            if report.get("error"):
                message = str(report["error"])
                kind = PolicyRefusedError if _refused_by_policy(message) else ContainerRuntimeError
                raise kind(f"pulling {reference}: {message}")
            image_id = report.get("id") or image_id
        if image_id is None:
            raise ContainerRuntimeError(f"pulling {reference}: Podman reported no image")
        return self.get_image(image_id)

    def tag(self, image_id: str, reference: str) -> None:
        """Point ``reference`` (``name:tag``) at ``image_id``."""
        name, _, tag = reference.rpartition(":")
        if "/" in tag or not name:
            raise ContainerRuntimeError(f"tagging {image_id[:12]}: {reference!r} has no tag")
        self._call(
            f"tagging {image_id[:12]} as {reference}",
            "post",
            f"/images/{image_id}/tag",
            params={"repo": name, "tag": tag},
        )

    def check_health(self, container: str) -> Health | None:
        """Run the container's health check now (libpod's ``/healthcheck``), as `podman
        healthcheck run` does; None when the container has no health check."""
        data = self._call(
            f"inspecting container {container}", "get", f"/containers/{container}/json"
        ).json()
        test = (data.get("Config") or {}).get("Healthcheck") or {}
        command = [part for part in test.get("Test") or [] if part not in ("CMD", "CMD-SHELL")]
        if not command or command == ["NONE"]:
            return None
        result = self._call(
            f"running the health check of {container}",
            "get",
            f"/containers/{container}/healthcheck",
        ).json()
        log = result.get("Log") or []
        output = str((log[-1] or {}).get("Output") or "").strip() if log else ""
        return Health(str(result.get("Status") or "starting"), " ".join(command), output)
