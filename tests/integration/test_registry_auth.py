"""Pulls through the real Podman service log in with the authfile's credentials.

A second distribution registry that requires htpasswd logins holds the image; the authfile
gives the right login only under the most specific key, or through a credential helper.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from auth_registry import AuthRegistry, start_auth_registry, trust
from harness import Stack, run

from workers.podman_runtime import ContainerRuntimeError, PodmanRuntime

pytestmark = pytest.mark.integration

USERNAME, PASSWORD = "robot", "right-Pa55word"
WRONG_PASSWORD = "wrong-Pa55word"


@dataclass(frozen=True)
class PrivateImage:
    registry: AuthRegistry
    reference: str  # 127.0.0.1:<port>/team/app:1
    image_id: str
    digest: str


@pytest.fixture(scope="module")
def private_image(stack: Stack) -> Iterator[PrivateImage]:
    """An image pushed with skopeo to a registry that refuses anonymous pulls, which the
    stack's Podman reaches over plain HTTP."""
    registry = start_auth_registry(stack, USERNAME, PASSWORD)
    try:
        trust(stack, registry.host)
        local = stack.build_image("authtest/app", "1")
        image_id = run(
            ["podman", "image", "inspect", "--format", "{{.Id}}", local], stack.build_env
        ).stdout.strip()
        reference = f"{registry.host}/team/app:1"
        digest_file = Path(stack.root) / "build" / "auth-test.digest"
        run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                f"{USERNAME}:{PASSWORD}",
                "--digestfile",
                str(digest_file),
                f"containers-storage:{local}",
                f"docker://{reference}",
            ],
            stack.build_env,
        )
        yield PrivateImage(registry, reference, image_id, digest_file.read_text().strip())
    finally:
        registry.stop()


@pytest.fixture
def runtime(stack: Stack, podman_url: str, private_image: PrivateImage) -> Iterator[PodmanRuntime]:
    """A PodmanRuntime on the stack's service; the private image is removed after the test."""
    podman = PodmanRuntime(podman_url)
    yield podman
    podman.close()
    stack.podman("rmi", "--force", private_image.reference, check=False)


def login(username: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


def write_authfile(tmp_path: Path, content: dict[str, object]) -> str:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(content))
    return str(path)


def assert_pulled(runtime: PodmanRuntime, image: PrivateImage, authfile: str) -> None:
    pulled = runtime.pull(image.reference, authfile)
    assert pulled.id == image.image_id
    assert f"{image.reference.rsplit(':', 1)[0]}@{image.digest}" in pulled.repo_digests


def test_the_namespace_key_beats_the_host_key(tmp_path, runtime, private_image):
    host = private_image.registry.host
    authfile = write_authfile(
        tmp_path,
        {
            "auths": {
                host: login(USERNAME, WRONG_PASSWORD),
                f"{host}/team": login(USERNAME, PASSWORD),
            }
        },
    )
    assert_pulled(runtime, private_image, authfile)


def test_a_credential_helper_logs_in(tmp_path, runtime, private_image, monkeypatch):
    host = private_image.registry.host
    helper = tmp_path / "bin" / "docker-credential-podhooktest"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\n"
        'read -r server\n[ "$1 $server" = "get ' + host + '" ] || exit 1\n'
        f"echo '{json.dumps({'ServerURL': host, 'Username': USERNAME, 'Secret': PASSWORD})}'\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    authfile = write_authfile(
        tmp_path,
        {"credHelpers": {host: "podhooktest"}, "auths": {host: login(USERNAME, WRONG_PASSWORD)}},
    )
    assert_pulled(runtime, private_image, authfile)


def test_wrong_credentials_fail_without_showing_the_password(tmp_path, runtime, private_image):
    host = private_image.registry.host
    authfile = write_authfile(
        tmp_path, {"auths": {f"{host}/team": login(USERNAME, WRONG_PASSWORD)}}
    )
    with pytest.raises(ContainerRuntimeError, match=f"pulling {private_image.reference}") as caught:
        runtime.pull(private_image.reference, authfile)
    message = str(caught.value)
    assert "unauthorized" in message.lower()
    assert WRONG_PASSWORD not in message and PASSWORD not in message
