"""Registry credentials from containers-auth.json files, found the way Podman finds them."""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELPER_TIMEOUT = 30.0

# What docker-credential-helpers print (exit status 1) for a server they hold nothing for;
# containers/image treats it as "no credentials", not as an error.
_HELPER_NOT_FOUND = "credentials not found in native keychain"


class AuthfileError(Exception):
    """Raised for an authfile or credential helper that cannot be used.

    The message names the file or helper and the image; it never holds a secret.
    """


@dataclass(frozen=True)
class Credentials:
    """A login for one registry: a username and password, or an identity (OAuth2 refresh)
    token. Secrets stay out of ``repr`` so a logged value shows no password."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)


def default_authfiles() -> list[str]:
    """The existing authfiles Podman would search when given none, in its order.

    REGISTRY_AUTH_FILE alone when set (Podman's --authfile default); otherwise, as
    containers/image's getAuthFilePaths: ``$XDG_RUNTIME_DIR/containers/auth.json`` (for a
    process without XDG_RUNTIME_DIR, ``/run/containers/<uid>/auth.json``),
    ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``), ``$DOCKER_CONFIG/config.json``
    (``~/.docker``). Docker's pre-2015 ``~/.dockercfg`` is not read. Never raises.
    """
    if explicit := os.environ.get("REGISTRY_AUTH_FILE"):
        return [explicit] if os.path.isfile(explicit) else []
    home = Path.home()
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    config_home = os.environ.get("XDG_CONFIG_HOME") or home / ".config"
    docker_config = os.environ.get("DOCKER_CONFIG") or home / ".docker"
    candidates = [
        Path(runtime_dir, "containers", "auth.json")
        if runtime_dir
        else Path(f"/run/containers/{os.getuid()}/auth.json"),
        Path(config_home, "containers", "auth.json"),
        Path(docker_config, "config.json"),
    ]
    return [str(path) for path in candidates if path.is_file()]


def find_credentials(authfile: str, reference: str) -> Credentials | None:
    """The credentials ``authfile`` holds for the image ``reference``, or None.

    ``reference`` is an image name without tag or digest, e.g. ``registry:5000/team/app``
    (``docker.io/library/app`` for Docker Hub). The lookup is containers/image's
    (pkg/docker/config findCredentialsInFile): ``credHelpers[<host>]`` first; then the most
    specific ``auths`` key (``host/team/app``, ``host/team``, ``host``); then any key that
    names the host as a URL (``https://host/v1/``; ``https://index.docker.io/v1/`` is Docker
    Hub). Docker's ``credsStore`` is asked last, when nothing above gave credentials.

    Raises AuthfileError when the file cannot be read or parsed, an entry's ``auth`` is not
    base64, or a credential helper is missing or fails.
    """
    try:
        with open(authfile, encoding="utf-8") as handle:
            content = json.load(handle)
    except OSError as error:
        raise AuthfileError(f"reading authfile {authfile}: {error.strerror or error}") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise AuthfileError(f"authfile {authfile} is not JSON ({type(error).__name__})") from None
    where = f"authfile {authfile} for {reference}"
    auths, helpers, store = _sections(content, where)
    registry = reference.split("/", 1)[0]

    if registry in helpers:
        return _ask_helper(helpers[registry], registry, f"{where}: credHelpers")
    found = _lookup(auths, reference, registry)
    if found is not None:
        key, entry = found
        credentials = _decode(entry, f'{where}: entry "{key}"')
        if credentials is not None:
            return credentials
    # containers/image ignores credsStore; Docker asks it instead of "auths" (whose entries are
    # then {} markers). Asking it last gives Docker's answer for Docker's files and leaves every
    # file that gives Podman credentials meaning the same here.
    if store:
        return _ask_helper(store, registry, f"{where}: credsStore")
    return None


def lookup_credentials(reference: str, authfile: str | None = None) -> Credentials | None:
    """The credentials for the image ``reference`` (a name without tag) from ``authfile``, or,
    without one, from the first of Podman's default files (``default_authfiles()``) that has
    any, as containers/image searches them. Raises AuthfileError as ``find_credentials``.
    """
    for path in [authfile] if authfile else default_authfiles():
        credentials = find_credentials(path, reference)
        if credentials is not None:
            return credentials
    return None


def _sections(content: Any, where: str) -> tuple[dict[str, Any], dict[str, str], str]:
    """``auths``, ``credHelpers`` and ``credsStore``, each checked for its JSON type."""
    if not isinstance(content, dict):
        raise AuthfileError(f"{where}: not a JSON object")
    # JSON null reads as absent, as Go's json.Unmarshal has it.
    auths = {} if content.get("auths") is None else content["auths"]
    helpers = {} if content.get("credHelpers") is None else content["credHelpers"]
    store = content.get("credsStore") or ""
    if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
        raise AuthfileError(f'{where}: "auths" is not an object of objects')
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise AuthfileError(f'{where}: "credHelpers" is not an object of strings')
    if not isinstance(store, str):
        raise AuthfileError(f'{where}: "credsStore" is not a string')
    return auths, helpers, store


def _lookup(
    auths: Mapping[str, Any], reference: str, registry: str
) -> tuple[str, Mapping[str, Any]] | None:
    """The ``auths`` entry containers/image picks for ``reference``: exact keys from the most
    specific down to the host, then the first key that normalizes to the host."""
    key = reference
    while True:
        if key in auths:
            return key, auths[key]
        if "/" not in key:
            break
        key = key.rsplit("/", 1)[0]
    wanted = _normalize_host(registry)
    for key, entry in auths.items():
        if _normalize_key(key) == wanted:
            return key, entry
    return None


def _normalize_key(key: str) -> str:
    # `docker login` long stored keys as URLs (https://index.docker.io/v1/); such a key names a
    # whole registry. Plain keys keep their path: it is a namespace (normalizeAuthFileKey).
    stripped = key.removeprefix("http://").removeprefix("https://")
    if stripped != key:
        stripped = stripped.split("/", 1)[0]
    return _normalize_host(stripped)


def _normalize_host(host: str) -> str:
    # containers/image's normalizeRegistry: Docker Hub's names meet at index.docker.io.
    return "index.docker.io" if host in ("docker.io", "registry-1.docker.io") else host


def _decode(entry: Mapping[str, Any], where: str) -> Credentials | None:
    """An ``auths`` entry's credentials; None for one without ``user:password`` in ``auth``
    (Docker writes ``{}`` markers for hosts kept by a credential helper)."""
    auth, token = entry.get("auth", ""), entry.get("identitytoken")
    if not isinstance(auth, str) or not isinstance(token, str | None):
        raise AuthfileError(f'{where}: "auth" and "identitytoken" must be strings')
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise AuthfileError(f'{where}: "auth" is not base64 of UTF-8 text') from None
    if ":" not in decoded:
        return None  # containers/image's decodeDockerAuth skips such entries, as Docker does
    username, _, password = decoded.partition(":")
    return Credentials(username, password.strip("\x00"), token or None)


def _ask_helper(name: str, registry: str, where: str) -> Credentials | None:
    """Run ``docker-credential-<name> get`` with ``registry`` on stdin; None when it has
    nothing for it. The protocol: docker/docker-credential-helpers, client.Get."""
    program = f"docker-credential-{name}"
    what = f"{where}: credential helper {program} for {registry}"
    try:
        result = subprocess.run(  # noqa: S603 - the helper named by the authfile, as Podman runs it
            [program, "get"],
            input=registry,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise AuthfileError(f"{what}: not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise AuthfileError(f"{what}: no answer after {HELPER_TIMEOUT:.0f}s") from None
    except OSError as error:
        raise AuthfileError(f"{what}: {error.strerror or error}") from None
    if result.returncode != 0:
        message = (result.stdout.strip() or result.stderr.strip())[-200:]
        if message == _HELPER_NOT_FOUND:
            return None
        raise AuthfileError(f"{what}: exited {result.returncode}: {message}")
    try:
        answer = json.loads(result.stdout)
        username, secret = answer.get("Username") or "", answer.get("Secret") or ""
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, AttributeError, TypeError):
        raise AuthfileError(f"{what}: answered something other than credentials JSON") from None
    if username == "<token>":  # the helpers' convention for an identity token
        return Credentials(identity_token=secret)
    if not username and not secret:
        return None
    return Credentials(username, secret)
