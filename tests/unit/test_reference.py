"""The one image reference parser: hosts with ports, nested paths, tags, digests, defaults."""

import pytest

from workers.reference import InvalidReferenceError, parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "qualified"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None, False),
        ("app:1", "docker.io", "library/app", "1", None, False),
        ("team/app:1.2", "docker.io", "team/app", "1.2", None, False),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None, True),
        ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None, True),
        ("registry:5000/app", "registry:5000", "app", "latest", None, True),
        ("registry.example.com/app:1.2", "registry.example.com", "app", "1.2", None, True),
        ("localhost/app:dev", "localhost", "app", "dev", None, True),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None, True),
        (f"quay.io/org/app@{DIGEST}", "quay.io", "org/app", None, DIGEST, True),
        (f"quay.io/org/app:1@{DIGEST}", "quay.io", "org/app", "1", DIGEST, True),
        ("Registry.Example.COM/app", "registry.example.com", "app", "latest", None, True),
        ("[::1]:5000/app:2", "[::1]:5000", "app", "2", None, True),
    ],
)
def test_parses_and_normalizes(text, registry, repository, tag, digest, qualified):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.fully_qualified) == (
        registry,
        repository,
        tag,
        digest,
        qualified,
    )


def test_port_is_not_mistaken_for_a_tag():
    ref = parse_reference("registry:5000/app")
    assert ref.tag == "latest"
    assert str(ref) == "registry:5000/app:latest"


def test_str_round_trips():
    assert str(parse_reference("nginx")) == "docker.io/library/nginx:latest"
    text = f"ghcr.io/o/a:1@{DIGEST}"
    assert str(parse_reference(text)) == text


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("https://registry/app", "scheme"),
        ("registry.example.com/App:1", "path component 'App'"),
        ("app:-bad", "invalid tag"),
        ("app@sha256:123", "invalid digest"),
        ("registry.example.com//app", "path component ''"),
        ("bad_host.example.com/app", "invalid registry"),
    ],
)
def test_rejects_with_the_reason(text, complaint):
    with pytest.raises(InvalidReferenceError, match=complaint.replace("(", r"\(")):
        parse_reference(text)


def test_names_same_tag_ignores_digest():
    a = parse_reference(f"r.example.com/app:1@{DIGEST}")
    b = parse_reference("r.example.com/app:1")
    assert a.names_same_tag(b)
    assert not a.names_same_tag(parse_reference("r.example.com/app:2"))
