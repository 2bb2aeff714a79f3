"""Tests for the Quay adapter against the Red Hat Quay doc sample and a flux-recv fixture."""

from __future__ import annotations

import json

import pytest
from werkzeug.datastructures import Headers

from tests.unit.sources_support import (
    Samples,
    assert_no_secret_refuses_unless_insecure,
    assert_refused,
    make_delivery,
    tuples,
)
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import PayloadError, get_source
from webhook.sources.quay import SOURCE, parse

SAMPLES = Samples("quay")


def with_changes(name: str, **changes) -> bytes:
    payload = SAMPLES.json(name)
    payload.update(changes)
    return json.dumps(payload).encode()


def test_registered_with_url_secret():
    assert get_source("quay") is SOURCE
    assert SOURCE.needs_registry is False


def test_doc_sample_reads_repository_not_the_inconsistent_name():
    # The doc sample says name "repository" and homepage ".../dgangaia/repository", but
    # repository and docker_url agree on dgangaia/test.
    result = parse(Headers(), SAMPLES.read("quay-repo-push.json"))
    assert tuples(result) == [("quay.io", "dgangaia/test", "latest", None)]
    assert result.ignored == 0
    assert result.events[0].source == "quay"


def test_flux_recv_capture():
    result = parse(Headers(), SAMPLES.read("quay-repo-push-flux-recv.json"))
    assert tuples(result) == [("quay.io", "hiddeco/foo", "3.10", None)]


def test_every_updated_tag_is_an_event():
    body = with_changes("quay-repo-push.json", updated_tags=["latest", "1.2", "1.2.3"])
    result = parse(Headers(), body)
    assert [e.tag for e in result.events] == ["latest", "1.2", "1.2.3"]
    assert {e.repository for e in result.events} == {"dgangaia/test"}


def test_legacy_tag_map_is_read_by_its_keys():
    body = with_changes("quay-repo-push.json", updated_tags={"latest": "b9d3e4f0a1c2"})
    assert tuples(parse(Headers(), body)) == [("quay.io", "dgangaia/test", "latest", None)]


def test_self_hosted_host_keeps_its_port():
    body = with_changes("quay-repo-push.json", docker_url="quay.example.com:8443/dgangaia/test")
    assert parse(Headers(), body).events[0].registry == "quay.example.com:8443"


def test_other_notifications_are_ignored():
    # build_success sample data from quay/quay notifications/notificationevent.py.
    payload = SAMPLES.json("quay-repo-push.json")
    del payload["updated_tags"]
    payload.update(build_id="fake-build-id", docker_tags=["latest"], trigger_kind="GitHub")
    result = parse(Headers(), json.dumps(payload).encode())
    assert result.events == []
    assert result.ignored == 1


def test_push_without_tags_is_ignored():
    result = parse(Headers(), with_changes("quay-repo-push.json", updated_tags=[]))
    assert result.events == []
    assert result.ignored == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"docker_url": "quay.io/dgangaia/other"}, "docker_url"),
        ({"docker_url": "dgangaia/test"}, "docker_url"),
        ({"docker_url": ""}, "docker_url"),
        ({"repository": None}, "repository"),
        ({"updated_tags": "latest"}, "updated_tags"),
        ({"updated_tags": ["latest", ""]}, "updated_tags"),
        ({"updated_tags": ["bad tag"]}, "updated_tags"),
    ],
)
def test_malformed_bodies_name_the_field(changes, field):
    with pytest.raises(PayloadError, match=field):
        parse(Headers(), with_changes("quay-repo-push.json", **changes))


def test_missing_docker_url_names_the_field():
    payload = SAMPLES.json("quay-repo-push.json")
    del payload["docker_url"]
    with pytest.raises(PayloadError, match="docker_url"):
        parse(Headers(), json.dumps(payload).encode())


@pytest.mark.parametrize("body", [b"", b"{", b"[]"])
def test_non_object_bodies_are_refused(body):
    with pytest.raises(PayloadError):
        parse(Headers(), body)


# Authentication: Quay sends no header and no signature, so the secret is in the URL.

ENDPOINT = Endpoint(name="quay", source="quay", secret="7hY-quay-secret")


def delivery(path_secret=None, query=None) -> Delivery:
    return make_delivery(
        SAMPLES.read("quay-repo-push.json"),
        {"Content-Type": "application/json"},
        query=query,
        path_secret=path_secret,
    )


def test_right_secret_in_path_or_query_passes():
    SOURCE.authenticate(delivery(path_secret="7hY-quay-secret"), ENDPOINT)
    SOURCE.authenticate(delivery(query={"token": "7hY-quay-secret"}), ENDPOINT)


@pytest.mark.parametrize("kwargs", [{"path_secret": "7hY"}, {"query": {"token": "x"}}, {}])
def test_wrong_or_missing_secret_is_refused(kwargs):
    assert_refused(SOURCE, delivery(**kwargs), ENDPOINT)


def test_no_secret_refuses_unless_insecure():
    assert_no_secret_refuses_unless_insecure(SOURCE, delivery())
