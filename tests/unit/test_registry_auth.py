"""Credentials for a pull come from a containers-auth.json file; a broken file is a clear error."""

import base64
import json

import pytest

from workers.podman_runtime import ContainerRuntimeError, registry_auth


def write(tmp_path, content):
    path = tmp_path / "auth.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_reads_the_registry_entry(tmp_path):
    auth = base64.b64encode(b"robot:pa:ss").decode()
    path = write(tmp_path, {"auths": {"registry.example.com": {"auth": auth}}})
    assert registry_auth(path, "registry.example.com") == {"username": "robot", "password": "pa:ss"}
    assert registry_auth(path, "other.example.com") is None


@pytest.mark.parametrize(
    "content",
    [
        {"auths": {"registry.example.com": {"auth": "abc"}}},  # not base64
        ["not", "an", "object"],
        {"no-auths": {}},
        "not json",
        {"auths": {"registry.example.com": {"auth": base64.b64encode(b"\xff\xfe").decode()}}},
    ],
)
def test_malformed_files_raise_the_runtime_error(tmp_path, content):
    with pytest.raises(ContainerRuntimeError, match="authfile"):
        registry_auth(write(tmp_path, content), "registry.example.com")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ContainerRuntimeError, match="reading authfile .*absent.json"):
        registry_auth(str(tmp_path / "absent.json"), "registry.example.com")
