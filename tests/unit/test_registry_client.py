"""The manifest HEAD client against an in-process registry double: auth, TLS choice, errors."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from workers import registry_client
from workers.registry_client import (
    MANIFEST_MEDIA_TYPES,
    RegistryCredentials,
    RegistryError,
    get_manifest_digest,
    is_insecure_registry,
)

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SERVED_DIGEST = "sha256:" + "ab" * 32  # what the header says (differs, to tell them apart)
PASSWORD = "pa:ss-w0rd-secret"
IDENTITY_TOKEN = "refresh-identity-secret"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    tls: bool


@dataclass
class FakeRegistry:
    """A registry double: manifests under /v2/, an optional token realm at /token.

    ``auth``: None (open), "bearer" (tokens from /token) or "basic". ``users`` maps a
    username to its password; the token realm also accepts anonymous requests when
    ``anonymous`` is true. Every request is recorded in ``requests``.
    """

    auth: str | None = None
    users: dict[str, str] = field(default_factory=lambda: {"robot": PASSWORD})
    anonymous: bool = True
    manifests: dict[tuple[str, str], bytes] = field(
        default_factory=lambda: {("team/app", "1"): MANIFEST}
    )
    send_digest: bool = True
    digest: str = SERVED_DIGEST
    status: int | None = None  # answer manifest requests with this status...
    status_methods: tuple[str, ...] = ("HEAD", "GET")  # ...of these methods
    accept_tokens: bool = True  # false: tokens are issued, then refused
    challenge_scope: str | None = None  # default: repository:<repo>:pull
    extra_challenge: str | None = None  # a challenge sent before the Bearer one
    expires_in: int | None = 300
    token_field: str = "token"
    delay: float = 0.0
    redirect_to: str | None = None  # base URL manifests are redirected to (307)
    requests: list[Request] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)
    host: str = ""
    base_url: str = ""

    def manifest_requests(self) -> list[Request]:
        return [r for r in self.requests if "/manifests/" in r.path]

    def token_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/token"]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def make_handler(fake: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def record(self) -> Request:
            length = int(self.headers.get("Content-Length") or 0)
            split = urllib.parse.urlsplit(self.path)
            request = Request(
                self.command,
                split.path,
                urllib.parse.parse_qs(split.query),
                dict(self.headers.items()),
                self.rfile.read(length) if length else b"",
                isinstance(self.connection, ssl.SSLSocket),
            )
            fake.requests.append(request)
            return request

        def reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self.manifest(self.record())

        def do_GET(self) -> None:  # noqa: N802
            request = self.record()
            if request.path == "/token":
                self.token(request, dict((k, v[0]) for k, v in request.query.items()))
            else:
                self.manifest(request)

        def do_POST(self) -> None:  # noqa: N802
            request = self.record()
            form = {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode()).items()}
            if request.path != "/token" or form.get("grant_type") != "refresh_token":
                self.reply(400, {})
            elif form.get("refresh_token") != IDENTITY_TOKEN:
                self.reply(401, {}, b'{"error": "invalid_grant"}')
            else:
                self.issue(form.get("scope", ""), "access_token")

        def token(self, request: Request, query: dict[str, str]) -> None:
            given = request.headers.get("Authorization")
            allowed = {basic(u, p) for u, p in fake.users.items()}
            if given is None and not fake.anonymous or given is not None and given not in allowed:
                self.reply(401, {}, b'{"details": "incorrect username or password"}')
                return
            self.issue(query.get("scope", ""), fake.token_field)

        def issue(self, scope: str, name: str) -> None:
            token = f"tok-{len(fake.issued)}-{scope}"
            fake.issued.add(token)
            answer: dict[str, Any] = {name: token}
            if fake.expires_in is not None:
                answer["expires_in"] = fake.expires_in
            self.reply(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())

        def manifest(self, request: Request) -> None:
            if fake.delay:
                time.sleep(fake.delay)
            parts = request.path.split("/manifests/")
            repository, tag = parts[0].removeprefix("/v2/"), parts[-1]
            if not self.authorized(request, repository):
                return
            if fake.redirect_to is not None:
                self.reply(307, {"Location": fake.redirect_to + request.path})
                return
            if fake.status is not None and request.method in fake.status_methods:
                error = {"errors": [{"code": "UNAVAILABLE", "message": "down"}]}
                self.reply(fake.status, {}, json.dumps(error).encode())
                return
            body = fake.manifests.get((repository, tag))
            if body is None:
                error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                self.reply(404, {"Content-Type": "application/json"}, json.dumps(error).encode())
                return
            headers = {"Content-Type": json.loads(body)["mediaType"]}
            if fake.send_digest:
                headers["Docker-Content-Digest"] = fake.digest
            self.reply(200, headers, body)

        def authorized(self, request: Request, repository: str) -> bool:
            given = request.headers.get("Authorization", "")
            if fake.auth == "basic":
                if given in {basic(u, p) for u, p in fake.users.items()}:
                    return True
                self.reply(401, {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            if fake.auth == "bearer":
                if fake.accept_tokens and given.removeprefix("Bearer ") in fake.issued:
                    return True
                scope = fake.challenge_scope or f"repository:{repository}:pull"
                challenge = f'Bearer realm="{fake.base_url}/token",service="fake",scope="{scope}"'
                if fake.extra_challenge:
                    challenge = f"{fake.extra_challenge}, {challenge}"
                self.reply(401, {"WWW-Authenticate": challenge})
                return False
            return True

    return Handler


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No host registries.conf, no proxy, and an empty token cache for every test."""
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "no-registries.conf"))
    monkeypatch.setattr(registry_client, "SYSTEM_REGISTRIES_CONF", tmp_path / "absent.conf")
    monkeypatch.setattr(registry_client, "SYSTEM_REGISTRIES_CONF_DIR", tmp_path / "absent.d")
    monkeypatch.setattr(registry_client, "_TOKENS", registry_client._TokenCache())
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert path, key path)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (needed to make a test certificate)")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def serve(certificate: tuple[Path, Path]) -> Iterator[Any]:
    """``serve(fake, tls=False)``: run ``fake`` on 127.0.0.1; stopped after the test."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(fake: FakeRegistry, tls: bool = False) -> FakeRegistry:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
        server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        fake.host = f"127.0.0.1:{server.server_address[1]}"
        fake.base_url = f"{'https' if tls else 'http'}://{fake.host}"
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return fake

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def write_conf(path: Path, *entries: str, v1_insecure: tuple[str, ...] = ()) -> str:
    text = "".join(f"\n[[registry]]\n{entry}\n" for entry in entries)
    if v1_insecure:
        text = f"[registries.insecure]\nregistries = {json.dumps(list(v1_insecure))}\n"
    path.write_text(text)
    return str(path)


def insecure_conf(tmp_path: Path, *hosts: str) -> str:
    """A registries.conf marking ``hosts`` insecure, as the integration harness writes it."""
    entries = [f'location = "{host}"\ninsecure = true' for host in hosts]
    return write_conf(tmp_path / "registries.conf", *entries)


def lookup(fake: FakeRegistry, tmp_path: Path, path: str = "team/app:1", **kwargs: Any) -> str:
    """get_manifest_digest of ``fake``'s ``path``, the fake being plain HTTP and insecure."""
    if "registries_conf" not in kwargs:
        kwargs["registries_conf"] = insecure_conf(tmp_path, fake.host)
    kwargs.setdefault("timeout", 5.0)
    return get_manifest_digest(f"{fake.host}/{path}", **kwargs)


def assert_no_secret(error: BaseException) -> None:
    seen = []
    cause: BaseException | None = error
    while cause is not None:
        seen += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    for text in seen:
        assert PASSWORD not in text and IDENTITY_TOKEN not in text and "tok-" not in text


# -- bearer tokens -----------------------------------------------------------------------------


def test_bearer_realm_gets_a_token_with_basic_login_and_the_challenged_scope(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer"))
    creds = RegistryCredentials(username="robot", password=PASSWORD, identity_token=None)

    assert lookup(fake, tmp_path, credentials=creds) == SERVED_DIGEST

    first, token, retried = fake.requests
    assert (first.method, first.path) == ("HEAD", "/v2/team/app/manifests/1")
    assert "Authorization" not in first.headers
    assert first.headers["Accept"].split(", ") == list(MANIFEST_MEDIA_TYPES)
    assert (token.method, token.path) == ("GET", "/token")
    assert token.headers["Authorization"] == basic("robot", PASSWORD)
    assert token.query == {
        "account": ["robot"],
        "service": ["fake"],
        "scope": ["repository:team/app:pull"],
    }
    assert retried.method == "HEAD"
    assert retried.headers["Authorization"] == "Bearer tok-0-repository:team/app:pull"


def test_anonymous_bearer_token_request_carries_no_credentials(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer", token_field="access_token"))

    assert lookup(fake, tmp_path) == SERVED_DIGEST

    (token,) = fake.token_requests()
    assert "Authorization" not in token.headers and "account" not in token.query


def test_identity_token_posts_the_oauth2_refresh_grant(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer"))
    creds = RegistryCredentials(username="<token>", password=None, identity_token=IDENTITY_TOKEN)

    assert lookup(fake, tmp_path, credentials=creds) == SERVED_DIGEST

    (token,) = fake.token_requests()
    assert token.method == "POST"
    assert token.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in token.headers
    assert urllib.parse.parse_qs(token.body.decode()) == {
        "service": ["fake"],
        "scope": ["repository:team/app:pull"],
        "grant_type": ["refresh_token"],
        "refresh_token": [IDENTITY_TOKEN],
        "client_id": ["podhook"],
    }


def test_challenge_parameters_are_read_from_quoted_strings_among_several_challenges(
    serve, tmp_path
):
    fake = serve(
        FakeRegistry(
            auth="bearer",
            challenge_scope="repository:team/app:pull,push",
            extra_challenge='Basic realm="has, a comma"',
        )
    )

    assert lookup(fake, tmp_path) == SERVED_DIGEST

    (token,) = fake.token_requests()
    assert token.query["scope"] == ["repository:team/app:pull,push"]
    assert token.query["service"] == ["fake"]


def test_tokens_are_cached_per_scope_until_they_expire(serve, tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(registry_client, "_now", lambda: clock[0])
    fake = serve(FakeRegistry(auth="bearer", expires_in=300))
    fake.manifests[("team/app", "2")] = MANIFEST
    fake.manifests[("team/other", "1")] = MANIFEST

    lookup(fake, tmp_path, "team/app:1")
    lookup(fake, tmp_path, "team/app:2")  # same repository, same scope: cached
    assert len(fake.token_requests()) == 1
    lookup(fake, tmp_path, "team/other:1")  # another scope
    assert len(fake.token_requests()) == 2

    clock[0] += 301
    lookup(fake, tmp_path, "team/app:1")
    assert len(fake.token_requests()) == 3


def test_tokens_without_a_lifetime_live_the_spec_default_of_60_seconds(
    serve, tmp_path, monkeypatch
):
    clock = [1000.0]
    monkeypatch.setattr(registry_client, "_now", lambda: clock[0])
    fake = serve(FakeRegistry(auth="bearer", expires_in=None))

    lookup(fake, tmp_path)
    clock[0] += 59
    lookup(fake, tmp_path)
    assert len(fake.token_requests()) == 1
    clock[0] += 2
    lookup(fake, tmp_path)
    assert len(fake.token_requests()) == 2


def test_a_cached_token_the_registry_refuses_is_replaced_once(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer"))
    lookup(fake, tmp_path)
    fake.issued.clear()  # the registry forgets (revokes) every token

    assert lookup(fake, tmp_path) == SERVED_DIGEST
    assert len(fake.token_requests()) == 2


def test_tokens_are_not_shared_between_logins(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer", users={"robot": PASSWORD, "other": "x"}))
    lookup(fake, tmp_path, credentials=RegistryCredentials("robot", PASSWORD, None))
    lookup(fake, tmp_path, credentials=RegistryCredentials("other", "x", None))
    lookup(fake, tmp_path)

    logins = [r.headers.get("Authorization") for r in fake.token_requests()]
    assert logins == [basic("robot", PASSWORD), basic("other", "x"), None]


def test_refused_token_login_is_unauthorized_without_the_password(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer", anonymous=False))
    creds = RegistryCredentials(username="robot", password=PASSWORD + "-wrong", identity_token=None)

    with pytest.raises(RegistryError) as caught:
        lookup(fake, tmp_path, credentials=creds)

    error = caught.value
    assert error.status == 401 and error.reference == f"{fake.host}/team/app:1"
    assert f"checking '{fake.host}/team/app:1'" in str(error)
    assert f"token service http://{fake.host}/token: unauthorized (HTTP 401)" in str(error)
    assert_no_secret(error)


def test_refused_identity_token_is_unauthorized_without_the_token(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer"))
    creds = RegistryCredentials(None, None, identity_token=IDENTITY_TOKEN + "-old")

    with pytest.raises(RegistryError, match=r"token service .*: unauthorized \(HTTP 401\)") as e:
        lookup(fake, tmp_path, credentials=creds)
    assert_no_secret(e.value)


def test_a_token_the_registry_refuses_is_unauthorized(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer", accept_tokens=False))

    with pytest.raises(RegistryError, match=r"unauthorized by 127\.0\.0\.1:\d+ \(HTTP 401\)") as e:
        lookup(fake, tmp_path)
    assert e.value.status == 401
    assert len(fake.manifest_requests()) == 2  # one challenge answered, no loop


# -- basic auth --------------------------------------------------------------------------------


def test_basic_challenge_is_answered_with_the_login(serve, tmp_path):
    fake = serve(FakeRegistry(auth="basic"))
    creds = RegistryCredentials(username="robot", password=PASSWORD, identity_token=None)

    assert lookup(fake, tmp_path, credentials=creds) == SERVED_DIGEST

    first, second = fake.requests
    assert "Authorization" not in first.headers
    assert second.headers["Authorization"] == basic("robot", PASSWORD)


def test_basic_challenge_with_a_wrong_password_is_unauthorized(serve, tmp_path):
    fake = serve(FakeRegistry(auth="basic"))
    creds = RegistryCredentials(username="robot", password=PASSWORD + "x", identity_token=None)

    with pytest.raises(RegistryError, match=r"unauthorized by 127\.0\.0\.1:\d+") as caught:
        lookup(fake, tmp_path, credentials=creds)
    assert caught.value.status == 401
    assert_no_secret(caught.value)


def test_basic_challenge_without_credentials_says_none_were_given(serve, tmp_path):
    fake = serve(FakeRegistry(auth="basic"))

    with pytest.raises(RegistryError, match="registry asks for a login .* none was given"):
        lookup(fake, tmp_path)
    assert len(fake.requests) == 1


def test_credentials_do_not_show_their_secrets():
    text = repr(RegistryCredentials("robot", PASSWORD, IDENTITY_TOKEN))
    assert "robot" in text and PASSWORD not in text and IDENTITY_TOKEN not in text


# -- answers -----------------------------------------------------------------------------------


def test_unknown_manifest_is_an_error_naming_the_reference(serve, tmp_path):
    fake = serve(FakeRegistry())

    with pytest.raises(RegistryError) as caught:
        lookup(fake, tmp_path, "team/app:missing")
    assert str(caught.value) == (
        f"checking '{fake.host}/team/app:missing': manifest unknown on {fake.host} (HTTP 404)"
    )
    assert caught.value.status == 404


def test_missing_digest_header_falls_back_to_get_and_hashes_the_body(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer", send_digest=False))

    assert lookup(fake, tmp_path) == MANIFEST_DIGEST

    methods = [(r.method, r.path) for r in fake.requests]
    assert methods == [
        ("HEAD", "/v2/team/app/manifests/1"),
        ("GET", "/token"),
        ("HEAD", "/v2/team/app/manifests/1"),
        ("GET", "/v2/team/app/manifests/1"),  # with the token already obtained
    ]
    assert fake.requests[-1].headers["Authorization"].startswith("Bearer ")
    assert fake.requests[-1].headers["Accept"].split(", ") == list(MANIFEST_MEDIA_TYPES)


def test_a_head_answer_makes_no_get(serve, tmp_path):
    fake = serve(FakeRegistry())
    lookup(fake, tmp_path)
    assert [r.method for r in fake.requests] == ["HEAD"]


def test_an_invalid_digest_header_is_an_error(serve, tmp_path):
    fake = serve(FakeRegistry(digest="not a digest"))
    with pytest.raises(RegistryError, match="sent an invalid digest 'not a digest'"):
        lookup(fake, tmp_path)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, r"rate limited by 127\.0\.0\.1:\d+ \(HTTP 429\)"),
        (503, r"127\.0\.0\.1:\d+ answered HTTP 503"),
    ],
)
def test_other_statuses_are_errors_carrying_the_status(serve, tmp_path, status, expected):
    fake = serve(FakeRegistry(status=status))
    with pytest.raises(RegistryError, match=expected) as caught:
        lookup(fake, tmp_path)
    assert caught.value.status == status


def test_a_distribution_error_code_is_named_when_the_answer_has_a_body(serve, tmp_path):
    # HEAD answers have no body; a GET's error names the registry's error code.
    fake = serve(FakeRegistry(send_digest=False, status=503, status_methods=("GET",)))
    with pytest.raises(RegistryError, match=r"answered HTTP 503 \(UNAVAILABLE\)"):
        lookup(fake, tmp_path)


def test_connection_refused_is_an_error_without_status():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(RegistryError, match=rf"'{host}/team/app:1': {host} over https: ") as e:
        get_manifest_digest(f"{host}/team/app:1", timeout=5)
    assert "refused" in str(e.value).lower() and e.value.status is None


def test_a_slow_registry_times_out(serve, tmp_path):
    fake = serve(FakeRegistry(delay=2.0))
    started = time.monotonic()
    with pytest.raises(RegistryError, match="timed out") as caught:
        lookup(fake, tmp_path, timeout=0.3)
    assert caught.value.status is None
    assert time.monotonic() - started < 1.5


def test_redirects_keep_head_and_drop_credentials_for_another_host(serve, tmp_path):
    target = serve(FakeRegistry())
    fake = serve(FakeRegistry(auth="basic", redirect_to=target.base_url))
    creds = RegistryCredentials(username="robot", password=PASSWORD, identity_token=None)
    conf = insecure_conf(tmp_path, fake.host, target.host)

    assert lookup(fake, tmp_path, credentials=creds, registries_conf=conf) == SERVED_DIGEST

    (redirected,) = target.requests
    assert redirected.method == "HEAD"
    assert "Authorization" not in redirected.headers


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("app:1", "not fully qualified"),
        ("registry.example.com/app@sha256:" + "a" * 64, "pinned by digest"),
        ("registry.example.com/App:1", "invalid reference"),
        ("", "invalid reference"),
    ],
)
def test_references_that_name_no_tag_in_a_registry_are_refused(reference, expected):
    with pytest.raises(RegistryError, match=expected) as caught:
        get_manifest_digest(reference)
    assert caught.value.reference == reference


def test_errors_survive_pickling():
    error = RegistryError("reg.example.com/app:1", "manifest unknown", 404)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.status, copy.reference) == (str(error), 404, error.reference)


def test_docker_hub_references_go_to_registry_1(serve, tmp_path, monkeypatch):
    fake = serve(FakeRegistry(manifests={("library/busybox", "1.36"): MANIFEST}))
    monkeypatch.setattr(registry_client, "_DOCKER_HUB_API", fake.host)
    # registries.conf names Docker Hub docker.io, whatever host its API answers on.
    conf = write_conf(tmp_path / "r.conf", 'location = "docker.io"\ninsecure = true')

    assert get_manifest_digest("docker.io/busybox:1.36", registries_conf=conf) == SERVED_DIGEST
    assert get_manifest_digest("index.docker.io/library/busybox:1.36", registries_conf=conf)
    assert [r.path for r in fake.requests] == ["/v2/library/busybox/manifests/1.36"] * 2


# -- TLS and registries.conf -------------------------------------------------------------------


def test_verified_https_refuses_an_untrusted_certificate(serve, tmp_path):
    fake = serve(FakeRegistry(), tls=True)
    with pytest.raises(RegistryError, match="over https: TLS certificate not trusted") as caught:
        get_manifest_digest(f"{fake.host}/team/app:1", timeout=5)
    assert caught.value.status is None
    assert fake.requests == []


def test_insecure_registry_skips_verification_over_https(serve, tmp_path):
    fake = serve(FakeRegistry(), tls=True)
    assert lookup(fake, tmp_path) == SERVED_DIGEST
    assert [r.tls for r in fake.requests] == [True]


def test_insecure_registry_falls_back_to_plain_http(serve, tmp_path):
    fake = serve(FakeRegistry(auth="bearer"))
    assert lookup(fake, tmp_path) == SERVED_DIGEST
    assert [r.tls for r in fake.requests] == [False, False, False]


def test_a_registry_not_marked_insecure_is_never_asked_over_http(serve, tmp_path):
    fake = serve(FakeRegistry())
    other = insecure_conf(tmp_path, "127.0.0.1:1", f"{fake.host}0")
    with pytest.raises(RegistryError, match="over https: TLS failed"):
        lookup(fake, tmp_path, registries_conf=other)
    assert fake.requests == []


def test_registries_conf_comes_from_the_environment_unless_given(serve, tmp_path, monkeypatch):
    fake = serve(FakeRegistry())
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", insecure_conf(tmp_path, fake.host))
    assert get_manifest_digest(f"{fake.host}/team/app:1", timeout=5) == SERVED_DIGEST

    secure = write_conf(tmp_path / "secure.conf")
    with pytest.raises(RegistryError, match="TLS failed"):
        get_manifest_digest(f"{fake.host}/team/app:1", registries_conf=secure, timeout=5)


def test_the_system_file_and_its_drop_ins_are_read_without_the_variable(
    serve, tmp_path, monkeypatch
):
    fake = serve(FakeRegistry())
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF")
    system, dropins = tmp_path / "registries.conf", tmp_path / "registries.conf.d"
    dropins.mkdir()
    monkeypatch.setattr(registry_client, "SYSTEM_REGISTRIES_CONF", system)
    monkeypatch.setattr(registry_client, "SYSTEM_REGISTRIES_CONF_DIR", dropins)
    write_conf(system, f'location = "{fake.host}"\ninsecure = false')
    write_conf(dropins / "50-local.conf", f'location = "{fake.host}"\ninsecure = true')
    write_conf(dropins / "ignored.txt", f'location = "{fake.host}"\ninsecure = false')

    assert get_manifest_digest(f"{fake.host}/team/app:1", timeout=5) == SERVED_DIGEST
    write_conf(dropins / "60-later.conf", f'location = "{fake.host}"\ninsecure = false')
    assert not is_insecure_registry(f"{fake.host}/team/app")


@pytest.mark.parametrize(
    ("entries", "name", "insecure"),
    [
        (['location = "reg.example.com"\ninsecure = true'], "reg.example.com/a/b", True),
        (['location = "reg.example.com"\ninsecure = true'], "reg.example.com:5000/a", True),
        (['location = "reg.example.com:5000"\ninsecure = true'], "reg.example.com/a", False),
        (['location = "reg.example.com"\ninsecure = true'], "reg.example.community/a", False),
        (['location = "reg.example.com/"\ninsecure = true'], "reg.example.com/a", True),
        (
            [
                'location = "reg.example.com"\ninsecure = true',
                'prefix = "reg.example.com/secure"\nlocation = "reg.example.com/secure"',
            ],
            "reg.example.com/secure/app",
            False,  # the longest prefix decides
        ),
        (['prefix = "*.example.com"\ninsecure = true'], "a.b.example.com/app", True),
        (['prefix = "*.example.com"\ninsecure = true'], "example.com/app", False),
        (['prefix = "*.example.com"\ninsecure = true'], "other.org/x.example.com", False),
        (['location = "reg.example.com"\nblocked = true'], "reg.example.com/a", False),
        ([], "reg.example.com/a", False),
    ],
)
def test_insecure_selection_follows_containers_image_prefix_rules(
    tmp_path, entries, name, insecure
):
    conf = write_conf(tmp_path / "r.conf", *entries)
    assert is_insecure_registry(name, conf) is insecure


def test_the_v1_insecure_list_is_honoured(tmp_path):
    conf = write_conf(tmp_path / "r.conf", v1_insecure=("old.example.com:5000",))
    assert is_insecure_registry("old.example.com:5000/app", conf)
    assert not is_insecure_registry("old.example.com/app", conf)


def test_a_missing_registries_conf_means_no_entries(tmp_path):
    assert not is_insecure_registry("reg.example.com/a", str(tmp_path / "absent.conf"))


def test_a_broken_registries_conf_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.conf"
    path.write_text("[[registry]\nlocation = ")
    with pytest.raises(RegistryError, match=rf"reading registries.conf {path}"):
        get_manifest_digest("reg.example.com/app:1", registries_conf=str(path))


def test_an_entry_without_location_or_prefix_is_an_error(tmp_path):
    conf = write_conf(tmp_path / "r.conf", "insecure = true")
    with pytest.raises(RegistryError, match="has no prefix or location"):
        is_insecure_registry("reg.example.com/a", conf)


def test_a_blocked_registry_is_refused_before_any_request(tmp_path):
    conf = write_conf(tmp_path / "r.conf", 'location = "127.0.0.1:1"\nblocked = true')
    with pytest.raises(RegistryError, match="registry '127.0.0.1:1' is blocked"):
        get_manifest_digest("127.0.0.1:1/app:1", registries_conf=conf)
