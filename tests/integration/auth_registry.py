"""A second test registry that refuses anonymous pulls (htpasswd logins), for authfile tests.

Like the harness's registry: CNCF distribution (``docker-registry serve``) on 127.0.0.1, plain
HTTP. ``trust(stack, host)`` marks it insecure for the stack's Podman service.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import (
    REGISTRY_BINARY,
    HarnessError,
    ManagedProcess,
    Stack,
    free_port,
    http_status,
    run,
    wait_for,
)
from podman import PodmanClient


@dataclass
class AuthRegistry:
    """The running registry and the one login it accepts."""

    port: int
    username: str
    password: str
    process: ManagedProcess

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def start_auth_registry(stack: Stack, username: str, password: str) -> AuthRegistry:
    """Start a registry that accepts only ``username``/``password`` (bcrypt htpasswd, the only
    hash distribution 2.8 reads) under the stack's root, stopped with the stack at the latest;
    returns once ``/v2/`` answers 401 to anonymous clients."""
    if shutil.which("htpasswd") is None:
        raise HarnessError("htpasswd is missing: scripts/install-deps.sh installs apache2-utils")
    directory = Path(tempfile.mkdtemp(prefix="auth-registry-", dir=stack.root))
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(run(["htpasswd", "-Bbn", username, password]).stdout)
    port = free_port()
    config = directory / "config.yml"
    config.write_text(
        "\n".join(
            [
                "version: 0.1",
                "log:",
                "  accesslog:",
                "    disabled: true",
                "storage:",
                "  filesystem:",
                f"    rootdirectory: {json.dumps(str(directory / 'data'))}",
                "http:",
                f'  addr: "127.0.0.1:{port}"',
                "  secret: podhook-auth-test",
                "auth:",
                "  htpasswd:",
                "    realm: podhook-auth-test",
                f"    path: {json.dumps(str(htpasswd))}",
                "",
            ]
        )
    )
    process = stack.start_process(
        [REGISTRY_BINARY, "serve", str(config)],
        name="auth-registry",
        cwd=directory,
        ready=lambda: http_status(f"http://127.0.0.1:{port}/v2/") == 401,
    )
    return AuthRegistry(port, username, password, process)


def trust(stack: Stack, host: str, timeout: float = 20.0) -> None:
    """Mark ``host`` insecure (plain HTTP) in the registries.conf of the stack's Podman.

    The API service caches registries.conf for its lifetime (containers/image sysregistriesv2
    configCache); SIGHUP makes it reload its configuration (Podman's infra.StartWatcher), done
    once ``/info`` lists the new registry.
    """
    assert stack.podman_service is not None
    conf = Path(stack.podman_env["CONTAINERS_REGISTRIES_CONF"])
    with conf.open("a") as handle:
        handle.write(f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    service = stack.podman_service
    os.kill(service.process.pid, signal.SIGHUP)
    wait_for(lambda: host in _podman_registries(service.socket_path), timeout, f"{host} in /info")


def _podman_registries(socket_path: Path) -> dict[str, object]:
    """The ``registries`` section of the service's ``/info``, over its Unix socket."""
    with PodmanClient(base_url=f"unix://{socket_path}") as client:
        return dict(client.info()["registries"])
