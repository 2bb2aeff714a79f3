"""Ask a registry which manifest digest a tag points at, with one manifest HEAD."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from workers.reference import InvalidReferenceError, parse_reference

# Media types a manifest HEAD accepts, multi-arch indexes first: Podman compares the digest
# of what it pulled by tag, which is the index when there is one (OCI image-spec
# media-types.md; distribution spec "Pulling manifests").
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
SYSTEM_REGISTRIES_CONF_DIR = Path("/etc/containers/registries.conf.d")

# Docker Hub's images are named docker.io/... but its API lives elsewhere (containers/image
# docker/docker_client.go: dockerHostname -> dockerRegistry).
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"

_USER_AGENT = "podhook"
# containers/image's limits (internal/iolimits): 4 MiB for a manifest, 1 MiB for a token.
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_MAX_TOKEN_BYTES = 1024 * 1024
# The token spec's default lifetime, also containers/image's minimum (docker_client.go).
_MIN_TOKEN_SECONDS = 60
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

_now = time.monotonic  # replaced in tests to expire cached tokens


class RegistryError(Exception):
    """A manifest digest could not be read; ``str()`` names the reference and what failed.

    ``status`` is the HTTP status the registry (or its token service) answered with, or None
    when there was no answer (network error, timeout, TLS failure, bad configuration).
    Messages never contain a password or a token.
    """

    def __init__(self, reference: str, problem: str, status: int | None = None) -> None:
        # The arguments are the exception's args, so it pickles (RQ stores job failures).
        super().__init__(reference, problem, status)
        self.reference = reference
        self.problem = problem
        self.status = status

    def __str__(self) -> str:
        return f"checking '{self.reference}': {self.problem}"


@dataclass(frozen=True)
class RegistryCredentials:
    """Login for one registry: a username and password, or an OAuth2 identity token."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def _fingerprint(self) -> str:
        # Tokens are cached per login; keep a digest of it rather than the secrets as a key.
        text = json.dumps([self.username, self.password, self.identity_token])
        return hashlib.sha256(text.encode()).hexdigest()


def get_manifest_digest(
    reference: str,
    *,
    credentials: RegistryCredentials | None = None,
    registries_conf: str | None = None,
    timeout: float = 30.0,
) -> str:
    """Return the digest (``sha256:...``) of the manifest ``reference`` names in its registry.

    ``reference`` is fully qualified (``host[:port]/path:tag``). One HEAD of
    ``/v2/<path>/manifests/<tag>`` is sent, plus what the registry's auth challenge requires
    (a token request, unless a token for the same realm, service and scope is cached). A
    registry that omits ``Docker-Content-Digest`` costs one GET whose body is hashed.
    TLS follows registries.conf as Podman does (see ``is_insecure_registry``):
    ``registries_conf`` if given, else ``$CONTAINERS_REGISTRIES_CONF``, else the system file
    and its drop-in directory.

    Raises RegistryError for an invalid, short or digest-pinned reference, a blocked
    registry, an unreadable registries.conf, a missing manifest, refused credentials, rate
    limits, other HTTP errors, network and TLS failures and timeouts.
    """
    try:
        ref = parse_reference(reference)
    except InvalidReferenceError as error:
        raise RegistryError(reference, f"invalid reference: {error}") from error
    if not ref.fully_qualified:
        raise RegistryError(reference, "not fully qualified (expected host/path:tag)")
    if ref.tag is None:
        raise RegistryError(reference, "pinned by digest; only tags are looked up")

    entry = _find_registry(ref.name, _load_registries(reference, registries_conf))
    if entry is not None and entry.blocked:
        raise RegistryError(reference, f"registry '{entry.prefix}' is blocked in registries.conf")
    insecure = entry is not None and entry.insecure

    host = _DOCKER_HUB_API if ref.registry == _DOCKER_HUB else ref.registry
    client = _Client(reference, host, insecure, credentials, timeout, ref.repository)
    path = f"/v2/{ref.repository}/manifests/{urllib.parse.quote(ref.tag, safe='')}"

    response = client.request_manifest("HEAD", path)
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        # The header is optional (OCI distribution spec, "Pulling manifests": "MAY");
        # a manifest's digest is the sha256 of its bytes (OCI image-spec descriptor.md).
        response = client.request_manifest("GET", path)
        digest = "sha256:" + hashlib.sha256(response.body).hexdigest()
    digest = digest.strip()
    if not _DIGEST.fullmatch(digest):
        raise RegistryError(reference, f"registry {host} sent an invalid digest {digest[:80]!r}")
    return digest


# ------------------------------------------------------------------------------------------
# registries.conf


@dataclass(frozen=True)
class _RegistryEntry:
    prefix: str
    insecure: bool
    blocked: bool


def is_insecure_registry(name: str, registries_conf: str | None = None) -> bool:
    """Whether registries.conf marks the registry of ``name`` (``host[:port]/path``) insecure.

    Reads ``registries_conf`` if given, else ``$CONTAINERS_REGISTRIES_CONF``, else
    /etc/containers/registries.conf plus /etc/containers/registries.conf.d/*.conf (drop-ins
    replace entries of the same prefix). The ``[[registry]]`` entry with the longest
    ``prefix`` (or ``location``) matching ``name`` decides, as in containers/image
    (pkg/sysregistriesv2: refMatchingPrefix); ``*.example.com`` matches subdomains; the
    v1 ``[registries.insecure]`` list is honoured too. A missing file means no entries.
    Raises RegistryError for a file that is not valid TOML or cannot be read.
    """
    entry = _find_registry(name, _load_registries(name, registries_conf))
    return entry is not None and entry.insecure


def _load_registries(reference: str, registries_conf: str | None) -> list[_RegistryEntry]:
    named = registries_conf or os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if named:
        return _merge([_read_conf(reference, Path(named))])
    dropins = sorted(SYSTEM_REGISTRIES_CONF_DIR.glob("*.conf"))
    return _merge([_read_conf(reference, p) for p in [SYSTEM_REGISTRIES_CONF, *dropins]])


def _merge(files: Iterable[list[_RegistryEntry]]) -> list[_RegistryEntry]:
    # Within a file the first entry of a prefix wins; a later file replaces it
    # (sysregistriesv2 postProcessRegistries and updateWithConfigurationFrom).
    merged: dict[str, _RegistryEntry] = {}
    for entries in files:
        own: dict[str, _RegistryEntry] = {}
        for entry in entries:
            own.setdefault(entry.prefix, entry)
        merged.update(own)
    return list(merged.values())


def _read_conf(reference: str, path: Path) -> list[_RegistryEntry]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return []  # Podman treats a missing registries.conf as an empty one
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise RegistryError(reference, f"reading registries.conf {path}: {error}") from error

    entries: list[_RegistryEntry] = []
    v1 = data.get("registries")
    if isinstance(v1, Mapping):
        for kind in ("insecure", "block"):
            table = v1.get(kind)
            hosts = table.get("registries", []) if isinstance(table, Mapping) else []
            for host in hosts if isinstance(hosts, list) else []:
                if isinstance(host, str) and host.strip():
                    prefix = host.strip().rstrip("/")
                    entries.append(_RegistryEntry(prefix, kind == "insecure", kind == "block"))
    registries = data.get("registry", [])
    if not isinstance(registries, list):
        raise RegistryError(reference, f"registries.conf {path}: 'registry' is not an array")
    for table in registries:
        if not isinstance(table, Mapping):
            continue
        where = table.get("prefix") or table.get("location")
        if not isinstance(where, str) or not where.strip():
            raise RegistryError(
                reference, f"registries.conf {path}: a [[registry]] has no prefix or location"
            )
        entries.append(
            _RegistryEntry(
                where.strip().rstrip("/"),
                table.get("insecure") is True,
                table.get("blocked") is True,
            )
        )
    return entries


def _find_registry(name: str, entries: Iterable[_RegistryEntry]) -> _RegistryEntry | None:
    best: _RegistryEntry | None = None
    for entry in entries:
        if _prefix_matches(name, entry.prefix) and (
            best is None or len(entry.prefix) > len(best.prefix)
        ):
            best = entry
    return best


def _prefix_matches(name: str, prefix: str) -> bool:
    if prefix.startswith("*."):
        index = name.find(prefix[1:])
        if index == -1 or "/" in name[:index]:
            return False
        end = index + len(prefix) - 1
    else:
        if not name.startswith(prefix):
            return False
        end = len(prefix)
    return end == len(name) or name[end] in ":/@"


# ------------------------------------------------------------------------------------------
# WWW-Authenticate and tokens


_CHALLENGE_TOKEN = re.compile(
    r"\s*(?:,\s*)*(?:(?P<key>[!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*"
    r'(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<plain>[^\s,]*))'
    r"|(?P<scheme>[!#$%&\'*+.^_`|~0-9A-Za-z-]+))"
)


def _parse_challenges(headers: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """``Bearer realm="r",scope="a:b:pull,push", Basic realm="x"`` → [(scheme, params)]."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for header in headers:
        position = 0
        while position < len(header):
            match = _CHALLENGE_TOKEN.match(header, position)
            if match is None or match.end() == position:
                break
            position = match.end()
            if match.group("scheme"):
                challenges.append((match.group("scheme").lower(), {}))
            elif challenges:
                quoted = match.group("quoted")
                value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match["plain"]
                challenges[-1][1][match.group("key").lower()] = value
    return challenges


class _TokenCache:
    """Bearer tokens per (realm, service, scope, login) until they expire."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        with self._lock:
            found = self._tokens.get(key)
            if found is None:
                return None
            if found[1] <= _now():
                del self._tokens[key]
                return None
            return found[0]

    def put(self, key: tuple[str, str, str, str], token: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[key] = (token, _now() + lifetime)

    def forget(self, key: tuple[str, str, str, str]) -> None:
        with self._lock:
            self._tokens.pop(key, None)


_TOKENS = _TokenCache()


# ------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Message
    body: bytes


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects keeping HEAD a HEAD, and never carry credentials to another host."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        old, target = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.netloc) != (target.scheme, target.netloc):
            new.remove_header("Authorization")
        if req.get_method() == "HEAD":
            new.method = "HEAD"
        return new


def _tls_context(insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _describe(error: BaseException) -> str:
    """What went wrong on the wire, in words (no URL with a query, no headers)."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason.reason or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class _Client:
    """The requests of one lookup: scheme choice, auth challenge, token, retries."""

    def __init__(
        self,
        reference: str,
        host: str,
        insecure: bool,
        credentials: RegistryCredentials | None,
        timeout: float,
        repository: str,
    ) -> None:
        self.reference = reference
        self.host = host
        self.insecure = insecure
        self.credentials = credentials
        self.timeout = timeout
        self.repository = repository
        self.scheme = "https"
        self.authorization: str | None = None  # reused by the GET after a HEAD
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(),
            urllib.request.HTTPSHandler(context=_tls_context(insecure)),
            _RedirectHandler(),
        )

    def fail(self, problem: str, status: int | None = None) -> RegistryError:
        return RegistryError(self.reference, problem, status)

    def request_manifest(self, method: str, path: str) -> _Response:
        """Send ``method`` for the manifest, answering an auth challenge once."""
        response = self.send_registry(method, path)
        if response.status == 401:
            response = self.authorize_and_retry(method, path, response)
        if response.status == 401:
            raise self.fail(f"unauthorized by {self.host} (HTTP 401)", 401)
        if response.status == 404:
            raise self.fail(f"manifest unknown on {self.host} (HTTP 404)", 404)
        if response.status == 429:
            raise self.fail(f"rate limited by {self.host} (HTTP 429)", 429)
        if response.status != 200:
            raise self.fail(
                f"{self.host} answered HTTP {response.status}{_error_code(response.body)}",
                response.status,
            )
        return response

    def authorize_and_retry(self, method: str, path: str, response: _Response) -> _Response:
        challenges = _parse_challenges(response.headers.get_all("WWW-Authenticate") or [])
        bearer = next((p for s, p in challenges if s == "bearer"), None)
        if bearer is not None:
            key, token, cached = self.bearer_token(bearer)
            self.authorization = f"Bearer {token}"
            response = self.send_registry(method, path)
            if response.status == 401 and cached:
                # A cached token the registry no longer accepts (revoked, clock skew): ask once.
                _TOKENS.forget(key)
                key, token, _ = self.bearer_token(bearer)
                self.authorization = f"Bearer {token}"
                response = self.send_registry(method, path)
            return response
        if any(scheme == "basic" for scheme, _ in challenges):
            self.authorization = self.basic_authorization("registry asks for a login")
            return self.send_registry(method, path)
        offered = ", ".join(scheme for scheme, _ in challenges) or "no challenge"
        raise self.fail(f"unauthorized by {self.host} (HTTP 401, {offered})", 401)

    def basic_authorization(self, why: str) -> str:
        creds = self.credentials
        if creds is None or not creds.username or creds.password is None:
            raise self.fail(f"unauthorized: {why} on {self.host} and none was given", 401)
        pair = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def bearer_token(
        self, challenge: Mapping[str, str]
    ) -> tuple[tuple[str, str, str, str], str, bool]:
        """The token for ``challenge`` (cached or fetched): (cache key, token, was cached)."""
        realm = challenge.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.fail(f"{self.host} sent a bearer challenge without a usable realm")
        # Named without query or user info: a realm URL may carry either.
        port = f":{parts.port}" if parts.port else ""
        where = f"token service {parts.scheme}://{parts.hostname}{port}{parts.path}"
        service = challenge.get("service", "")
        scope = challenge.get("scope") or f"repository:{self.repository}:pull"
        login = self.credentials._fingerprint() if self.credentials else ""
        key = (realm, service, scope, login)
        token = _TOKENS.get(key)
        if token is not None:
            return key, token, True

        creds = self.credentials
        query: list[tuple[str, str]] = []
        if service:
            query.append(("service", service))
        query += [("scope", s) for s in scope.split()]
        headers = {"User-Agent": _USER_AGENT}
        data: bytes | None = None
        if creds is not None and creds.identity_token:
            # OAuth2 refresh-token grant (distribution docs, spec/auth/oauth.md), as Podman
            # does for identity tokens (docker_client.go getBearerTokenOAuth2).
            form = [
                *query,
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", _USER_AGENT),
            ]
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = realm
        else:
            if creds is not None and creds.username:
                query.insert(0, ("account", creds.username))
                if creds.password is not None:
                    headers["Authorization"] = self.basic_authorization("token service")
            separator = "&" if parts.query else "?"
            url = realm + (separator + urllib.parse.urlencode(query) if query else "")

        response = self.send(url, "POST" if data is not None else "GET", headers, data, where)
        if response.status != 200:
            problem = "unauthorized" if response.status in (401, 403) else "failed"
            raise self.fail(f"{where}: {problem} (HTTP {response.status})", response.status)
        try:
            body = json.loads(response.body)
            token = body.get("token") or body.get("access_token")
            lifetime = body.get("expires_in") or _MIN_TOKEN_SECONDS
        except (ValueError, AttributeError) as error:
            raise self.fail(f"{where}: answer is not a JSON object") from error
        if not isinstance(token, str) or not token:
            raise self.fail(f"{where}: answer has no token")
        if not isinstance(lifetime, int | float):
            lifetime = _MIN_TOKEN_SECONDS
        _TOKENS.put(key, token, max(float(lifetime), _MIN_TOKEN_SECONDS))
        return key, token, False

    def send_registry(self, method: str, path: str) -> _Response:
        """Send to the registry; an insecure one falls back to HTTP when HTTPS fails."""
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES), "User-Agent": _USER_AGENT}
        if self.authorization:
            headers["Authorization"] = self.authorization
        where = f"{self.host}"
        try:
            return self.send(f"{self.scheme}://{self.host}{path}", method, headers, None, where)
        except RegistryError as error:
            # containers/image pings HTTPS and, for insecure registries only, retries over
            # plain HTTP when that fails (docker_client.go detectPropertiesHelper). Only a
            # failure without an answer (TLS, refused, timeout) switches; a status is final.
            if not (self.insecure and self.scheme == "https" and error.status is None):
                raise
            self.scheme = "http"
        return self.send(f"http://{self.host}{path}", method, headers, None, where)

    def send(
        self, url: str, method: str, headers: dict[str, str], data: bytes | None, where: str
    ) -> _Response:
        limit = _MAX_MANIFEST_BYTES if data is None else _MAX_TOKEN_BYTES
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        scheme = urllib.parse.urlsplit(url).scheme
        try:
            try:
                with self.opener.open(request, timeout=self.timeout) as answer:
                    status, answer_headers, body = (
                        answer.status,
                        answer.headers,
                        answer.read(limit + 1),
                    )
            except urllib.error.HTTPError as error:
                with error:
                    status, answer_headers, body = error.code, error.headers, error.read(limit + 1)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
            raise self.fail(f"{where} over {scheme}: {_describe(error)}") from error
        if len(body) > limit:
            raise self.fail(f"{where} sent more than {limit} bytes", status)
        return _Response(status, answer_headers, body)


def _error_code(body: bytes) -> str:
    """`` (MANIFEST_INVALID)`` from a distribution error body, or nothing."""
    try:
        code = json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    return f" ({code})" if isinstance(code, str) and code.isupper() else ""
