"""Pull credentials are found in authfiles as Podman finds them; broken ones are clear errors.

The rules are containers/image's pkg/docker/config (findCredentialsInFile, getAuthFilePaths);
credential helpers are real shell scripts on PATH, run as Podman runs them.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from workers.authfile import AuthfileError, Credentials, default_authfiles, find_credentials
from workers.podman_runtime import ContainerRuntimeError, registry_auth_header

IMAGE = "registry.example.com:5000/team/app"
HOST = "registry.example.com:5000"

# A credential helper speaking the docker-credential-helpers protocol: `get`, server on stdin.
HELPER = """\
#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  registry.example.com:5000)
    echo '{"ServerURL":"x","Username":"helper-user","Secret":"helper-pw"}' ;;
  tokens.example.com)
    echo '{"ServerURL":"x","Username":"<token>","Secret":"refresh-me"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""
FAILING_HELPER = "#!/bin/sh\necho 'keychain is locked'\nexit 3\n"
GARBAGE_HELPER = "#!/bin/sh\necho 'Username: helper-user'\n"


def auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def write(tmp_path: Path, content: Any, name: str = "auth.json") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """docker-credential-{test,failing,garbage} in a directory put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("test", HELPER), ("failing", FAILING_HELPER), ("garbage", GARBAGE_HELPER)):
        script = bin_dir / f"docker-credential-{name}"
        script.write_text(text)
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


# -- auths ----------------------------------------------------------------------------------


def test_reads_the_registry_entry(tmp_path):
    path = write(tmp_path, {"auths": {HOST: {"auth": auth("robot", "pa:ss")}}})
    assert find_credentials(path, IMAGE) == Credentials("robot", "pa:ss")
    assert find_credentials(path, "other.example.com/team/app") is None


@pytest.mark.parametrize(
    ("keys", "winner"),
    [
        ([HOST, f"{HOST}/team", f"{HOST}/team/app"], f"{HOST}/team/app"),
        ([HOST, f"{HOST}/team"], f"{HOST}/team"),
        ([HOST, f"{HOST}/other", f"{HOST}/team/app/sub"], HOST),
        ([f"https://{HOST}/v1/", HOST], HOST),  # an exact key beats a URL key
    ],
)
def test_the_most_specific_key_wins(tmp_path, keys, winner):
    # Each entry's username is its key (with the port's colon made a dash).
    entries = {key: {"auth": auth(key.replace(":", "-"), "pw")} for key in keys}
    path = write(tmp_path, {"auths": entries})
    assert find_credentials(path, IMAGE) == Credentials(winner.replace(":", "-"), "pw")


@pytest.mark.parametrize(
    ("key", "image"),
    [
        (f"https://{HOST}", IMAGE),
        (f"http://{HOST}/v2/", IMAGE),
        (f"https://{HOST}/v1/", IMAGE),
        ("https://index.docker.io/v1/", "docker.io/library/busybox"),
        ("index.docker.io", "docker.io/library/busybox"),
        ("registry-1.docker.io", "docker.io/team/app"),
    ],
)
def test_url_keys_and_docker_hub_names_match_the_host(tmp_path, key, image):
    path = write(tmp_path, {"auths": {key: {"auth": auth("robot", "pw")}}})
    assert find_credentials(path, image) == Credentials("robot", "pw")


def test_a_plain_key_with_a_path_is_a_namespace_not_a_url(tmp_path):
    path = write(tmp_path, {"auths": {f"{HOST}/v2": {"auth": auth("robot", "pw")}}})
    assert find_credentials(path, IMAGE) is None


def test_identity_token_and_nul_padding(tmp_path):
    entry = {"auth": auth("robot", "pw\x00\x00"), "identitytoken": "refresh-me"}
    path = write(tmp_path, {"auths": {HOST: entry}})
    assert find_credentials(path, IMAGE) == Credentials("robot", "pw", "refresh-me")


@pytest.mark.parametrize(
    "entry", [{}, {"auth": ""}, {"auth": base64.b64encode(b"nocolon").decode()}]
)
def test_entries_without_user_and_password_hold_nothing(tmp_path, entry):
    # Docker writes {} markers for hosts whose login is in a credential helper.
    assert find_credentials(write(tmp_path, {"auths": {HOST: entry}}), IMAGE) is None


def test_files_podman_accepts_without_auths(tmp_path):
    assert find_credentials(write(tmp_path, {}), IMAGE) is None
    assert find_credentials(write(tmp_path, {"credHelpers": {}, "other": 1}), IMAGE) is None


def test_credentials_keep_secrets_out_of_repr():
    text = repr(Credentials("robot", "s3cret", "t0ken"))
    assert "robot" in text and "s3cret" not in text and "t0ken" not in text


# -- credential helpers --------------------------------------------------------------------


def test_cred_helper_gets_the_host_and_beats_auths(tmp_path, helpers):
    content = {
        "auths": {f"{HOST}/team/app": {"auth": auth("file-user", "file-pw")}},
        "credHelpers": {HOST: "test"},
    }
    assert find_credentials(write(tmp_path, content), IMAGE) == Credentials(
        "helper-user", "helper-pw"
    )
    assert (helpers / "asked").read_text() == f"{HOST}\n"


def test_cred_helper_without_credentials_means_none(tmp_path, helpers):
    # containers/image does not fall back to auths when the host's helper has nothing.
    content = {
        "auths": {"nothing.example.com": {"auth": auth("file-user", "file-pw")}},
        "credHelpers": {"nothing.example.com": "test"},
    }
    assert find_credentials(write(tmp_path, content), "nothing.example.com/app") is None


def test_helper_identity_token(tmp_path, helpers):
    path = write(tmp_path, {"credHelpers": {"tokens.example.com": "test"}})
    assert find_credentials(path, "tokens.example.com/app") == Credentials(
        identity_token="refresh-me"
    )


def test_creds_store_is_the_default_helper_after_auths(tmp_path, helpers):
    content = {
        "auths": {"other.example.com": {"auth": auth("file-user", "file-pw")}, HOST: {}},
        "credsStore": "test",
    }
    path = write(tmp_path, content)
    assert find_credentials(path, IMAGE) == Credentials("helper-user", "helper-pw")
    assert find_credentials(path, "other.example.com/app") == Credentials("file-user", "file-pw")
    assert find_credentials(path, "unknown.example.com/app") is None
    assert (helpers / "asked").read_text() == f"{HOST}\nunknown.example.com\n"


@pytest.mark.parametrize(
    ("helper", "message"),
    [
        ("failing", "docker-credential-failing for registry.example.com:5000: exited 3: keychain"),
        ("garbage", "docker-credential-garbage .* other than credentials JSON"),
        ("absent", "docker-credential-absent for registry.example.com:5000: not found on PATH"),
    ],
)
def test_helper_failures_name_the_helper_file_and_registry(tmp_path, helpers, helper, message):
    path = write(tmp_path, {"credHelpers": {HOST: helper}})
    with pytest.raises(AuthfileError, match=message) as caught:
        find_credentials(path, IMAGE)
    assert path in str(caught.value) and "helper-user" not in str(caught.value)


# -- broken files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ("", "is not JSON"),
        (["not", "an", "object"], "not a JSON object"),
        ({"auths": []}, '"auths" is not an object'),
        ({"auths": {HOST: "robot:pw"}}, '"auths" is not an object'),
        ({"auths": {HOST: {"auth": 12}}}, "must be strings"),
        ({"credHelpers": {HOST: ["test"]}}, '"credHelpers" is not an object of strings'),
        ({"credsStore": 1}, '"credsStore" is not a string'),
        ({"auths": {HOST: {"auth": "s3cret-not-base64"}}}, f'entry "{HOST}": "auth" is not'),
        ({"auths": {HOST: {"auth": base64.b64encode(b"\xff:\xfe").decode()}}}, "not base64 of UTF"),
    ],
)
def test_malformed_files_raise_naming_the_file_not_the_secret(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(AuthfileError, match=message) as caught:
        find_credentials(path, IMAGE)
    assert path in str(caught.value)
    assert "s3cret" not in str(caught.value) and "robot" not in str(caught.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(AuthfileError, match="reading authfile .*absent.json"):
        find_credentials(str(tmp_path / "absent.json"), IMAGE)


# -- which files when none is given ----------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME in tmp_path and none of the variables that move authfiles."""
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


def make(path: Path, content: Any = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content or {}))
    return str(path)


def test_default_authfiles_in_podmans_order(tmp_path, clean_env, monkeypatch):
    runtime = make(tmp_path / "run" / "containers" / "auth.json")
    config = make(clean_env / ".config" / "containers" / "auth.json")
    docker = make(clean_env / ".docker" / "config.json")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert default_authfiles() == [runtime, config, docker]

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    moved = [make(tmp_path / "xdg" / "containers" / "auth.json")]
    moved.append(make(tmp_path / "dockercfg" / "config.json"))
    assert default_authfiles() == [runtime, *moved]


def test_registry_auth_file_is_the_only_one_when_set(tmp_path, clean_env, monkeypatch):
    make(clean_env / ".docker" / "config.json")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "absent.json"))
    assert default_authfiles() == []
    monkeypatch.setenv("REGISTRY_AUTH_FILE", make(tmp_path / "chosen.json"))
    assert default_authfiles() == [str(tmp_path / "chosen.json")]


def test_without_xdg_runtime_dir_the_per_uid_file(clean_env, monkeypatch):
    monkeypatch.setattr(Path, "is_file", lambda self: True)
    assert default_authfiles() == [
        f"/run/containers/{os.getuid()}/auth.json",
        str(clean_env / ".config" / "containers" / "auth.json"),
        str(clean_env / ".docker" / "config.json"),
    ]


# -- the X-Registry-Auth header ------------------------------------------------------------


def decode(headers: dict[str, str]) -> dict[str, str]:
    assert list(headers) == ["X-Registry-Auth"]
    return dict(json.loads(base64.urlsafe_b64decode(headers["X-Registry-Auth"])))


def test_header_carries_username_and_password(tmp_path):
    path = write(tmp_path, {"auths": {f"{HOST}/team": {"auth": auth("robot", "pw")}}})
    headers = registry_auth_header(f"{IMAGE}:1.2", path)
    assert decode(headers) == {"username": "robot", "password": "pw"}
    assert registry_auth_header(f"{HOST}/other/app@sha256:{'a' * 64}", path) == {}


def test_header_carries_identity_tokens(tmp_path, helpers):
    path = write(tmp_path, {"credHelpers": {"tokens.example.com": "test"}})
    assert decode(registry_auth_header("tokens.example.com/app:1", path)) == {
        "identitytoken": "refresh-me"
    }


def test_docker_hub_names_are_normalized_for_the_lookup(tmp_path):
    path = write(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": auth("hub", "pw")}}})
    header = registry_auth_header("index.docker.io/library/busybox:1", path)
    assert decode(header)["username"] == "hub"
    assert registry_auth_header("busybox:1", path) == {}  # a short name: Podman's search list


def test_without_authfile_the_default_files_are_searched_in_order(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    make(
        tmp_path / "run" / "containers" / "auth.json",
        {"auths": {"quay.io": {"auth": auth("q", "1")}}},
    )
    make(clean_env / ".docker" / "config.json", {"auths": {HOST: {"auth": auth("docker", "2")}}})
    assert decode(registry_auth_header(f"{IMAGE}:1", None))["username"] == "docker"
    assert decode(registry_auth_header("quay.io/team/app:1", None))["username"] == "q"
    assert registry_auth_header("ghcr.io/team/app:1", None) == {}


def test_header_errors_are_runtime_errors_naming_the_authfile(tmp_path, helpers):
    path = write(tmp_path, {"credHelpers": {HOST: "failing"}})
    with pytest.raises(ContainerRuntimeError, match=f"pulling {IMAGE}:1: authfile {path}"):
        registry_auth_header(f"{IMAGE}:1", path)
    with pytest.raises(ContainerRuntimeError, match="reading authfile .*absent.json"):
        registry_auth_header(f"{IMAGE}:1", str(tmp_path / "absent.json"))
