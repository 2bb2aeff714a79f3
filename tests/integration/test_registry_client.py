"""The manifest HEAD client against the real distribution registry of the harness.

The registry is plain HTTP on 127.0.0.1 and marked insecure in the registries.conf the harness
writes (found, as Podman finds it, through CONTAINERS_REGISTRIES_CONF): the client's HTTPS
attempt fails and it falls back to HTTP, as containers/image does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import Stack, run

from workers.registry_client import RegistryError, get_manifest_digest

pytestmark = pytest.mark.integration

REPOSITORY = "podhook-it/registry-client"
LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture
def conf_from_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    """The harness's registries.conf, put where workers find it: CONTAINERS_REGISTRIES_CONF."""
    path = stack.env["CONTAINERS_REGISTRIES_CONF"]
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", path)
    return path


def test_digest_matches_the_pushed_image_and_changes_with_its_content(
    stack: Stack, push_image: Any, conf_from_env: str
) -> None:
    assert stack.registry is not None
    first = push_image(REPOSITORY, "moving", marker="one")

    digest = get_manifest_digest(first.ref)

    assert digest == first.digest == stack.registry.manifest_digest(REPOSITORY, "moving")

    second = push_image(REPOSITORY, "moving", marker="two")
    changed = get_manifest_digest(second.ref)

    assert changed != digest
    assert changed == second.digest == stack.registry.manifest_digest(REPOSITORY, "moving")


def test_the_registries_conf_argument_is_read(stack: Stack, push_image: Any) -> None:
    pushed = push_image(REPOSITORY, "argument")
    conf = stack.env["CONTAINERS_REGISTRIES_CONF"]

    assert get_manifest_digest(pushed.ref, registries_conf=conf, timeout=10) == pushed.digest


def test_docker_schema2_manifests_are_accepted(
    stack: Stack, push_image: Any, conf_from_env: str
) -> None:
    pushed = push_image(REPOSITORY, "schema2", manifest_format="v2s2")
    assert get_manifest_digest(pushed.ref) == pushed.digest


def test_an_image_index_is_answered_with_the_index_digest(stack: Stack, conf_from_env: str) -> None:
    """A multi-arch tag: Podman records the index's digest, so the HEAD must accept indexes."""
    assert stack.registry is not None
    local = stack.build_image(REPOSITORY, "index-member", marker="member")
    target = f"{stack.registry.host}/{REPOSITORY}:index"
    work = Path(tempfile.mkdtemp(prefix="index-", dir=stack.root / "build"))
    try:
        digest_file = work / "digest"
        run(["podman", "manifest", "create", "localhost/podhook-it-index"], stack.build_env)
        try:
            run(
                ["podman", "manifest", "add", "localhost/podhook-it-index"]
                + [f"containers-storage:{local}"],
                stack.build_env,
            )
            run(
                ["podman", "manifest", "push", "--all", "--tls-verify=false"]
                + ["--digestfile", str(digest_file)]
                + ["localhost/podhook-it-index", f"docker://{target}"],
                stack.build_env,
            )
        finally:
            run(
                ["podman", "manifest", "rm", "localhost/podhook-it-index"],
                stack.build_env,
                check=False,
            )
        pushed_digest = digest_file.read_text().strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    accept = "application/vnd.oci.image.index.v1+json, " + LIST_TYPE
    request = urllib.request.Request(
        f"{stack.registry.url}/v2/{REPOSITORY}/manifests/index", headers={"Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - local
        assert json.load(answer)["mediaType"] in (
            "application/vnd.oci.image.index.v1+json",
            LIST_TYPE,
        )

    digest = get_manifest_digest(target)

    assert digest == pushed_digest == stack.registry.manifest_digest(REPOSITORY, "index")


def test_an_unknown_tag_is_manifest_unknown(stack: Stack, conf_from_env: str) -> None:
    assert stack.registry is not None
    reference = f"{stack.registry.host}/{REPOSITORY}:never-pushed"

    with pytest.raises(RegistryError, match="manifest unknown") as caught:
        get_manifest_digest(reference)

    assert caught.value.status == 404 and caught.value.reference == reference


def test_without_the_insecure_entry_the_plain_http_registry_is_refused(
    stack: Stack, push_image: Any, tmp_path: Path
) -> None:
    pushed = push_image(REPOSITORY, "secure-only")
    secure = tmp_path / "registries.conf"
    secure.write_text("unqualified-search-registries = []\n")

    with pytest.raises(RegistryError, match="over https: TLS failed"):
        get_manifest_digest(pushed.ref, registries_conf=str(secure), timeout=10)
