"""Notifications through apprise to a real HTTP receiver on this machine."""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers.notify import notify_outcome
from workers.report import JobReport
from workers.settings import Settings, SettingsError, load_settings

DIGEST = "sha256:" + "ab" * 32
OLD = "1" * 64
NEW = "2" * 64
TOKEN = "webhook-secret-7c1d"
ENDPOINT_SECRET = "endpoint-secret-55aa"


class Receiver:
    """An HTTP server on 127.0.0.1 recording each request; answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length).decode(),
                    }
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def json_payloads(self) -> list[dict[str, Any]]:
        return [json.loads(request["body"]) for request in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join(timeout=5)


def settings(*urls: str, **overrides: Any) -> Settings:
    return load_settings(
        {},
        overrides={
            "notify_urls": list(urls),
            "webhook_token": TOKEN,
            "endpoints": {"hub": {"source": "dockerhub", "secret": ENDPOINT_SECRET}},
            **overrides,
        },
    )


def report(*rows: dict[str, Any]) -> JobReport:
    """A push's report as a job saves it (read back from its stored shape)."""
    return JobReport.from_dict(
        {
            "host": "web-1",
            "job": "push-0123456789abcdef",
            "event": {
                "registry": "registry.example.com",
                "repository": "team/app",
                "tag": "1.2",
                "digest": DIGEST,
                "source": "distribution",
            },
            "containers": list(rows),
        }
    )


def row(name: str, state: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {
        "container_id": f"id-{name}",
        "container_name": name,
        "unit": f"container-{name}.service",
        "image": "registry.example.com/team/app:1.2",
        "policy": "registry",
        "state": state,
        "reason": reason,
        "old_image": OLD,
        "new_image": NEW,
        "timings": {},
        **fields,
    }


ROLLED_BACK = row(
    "web",
    "rolled_back",
    "restarting 'container-web.service': unit is failed (failed); rolled back to the old image",
)
UPDATED = row("api", "updated", "restarted container-api.service on the new image")


def test_a_rolled_back_container_is_notified_with_everything_needed(receiver):
    url = f"json://127.0.0.1:{receiver.port}/hooks/podhook"
    assert notify_outcome(settings(url), report(ROLLED_BACK, UPDATED)) is True

    [request] = receiver.requests
    assert request["path"] == "/hooks/podhook"
    [payload] = receiver.json_payloads()
    assert payload["type"] == "warning"
    assert payload["title"] == "podhook: registry.example.com/team/app:1.2 on web-1: rolled_back"
    message = payload["message"]
    for expected in (
        "host: web-1",
        "image: registry.example.com/team/app:1.2",
        f"digest: {DIGEST}",
        "job: push-0123456789abcdef",
        "container: web",
        "unit: container-web.service",
        "state: rolled_back",
        "reason: restarting 'container-web.service': unit is failed (failed); rolled back",
        f"old image: {OLD}",
        f"new image: {NEW}",
    ):
        assert expected in message, (expected, message)
    # Only the states asked for (failed, rolled_back by default) are in the message.
    assert "container-api.service" not in message


def test_notify_on_chooses_the_states_and_the_worst_sets_the_type(receiver):
    url = f"json://127.0.0.1:{receiver.port}/"
    failed = row("db", "failed", "pulling registry.example.com/team/app:1.2: unauthorized")
    everything = settings(url, notify_on={"updated", "failed", "rolled_back"})
    assert notify_outcome(everything, report(UPDATED, ROLLED_BACK, failed)) is True
    assert notify_outcome(everything, report(UPDATED)) is True
    first, second = receiver.json_payloads()
    assert first["type"] == "failure"
    assert "failed, rolled_back, updated" in first["title"]
    assert all(f"unit: container-{n}.service" in first["message"] for n in ("api", "web", "db"))
    assert second["type"] == "success" and "state: updated" in second["message"]


def test_nothing_is_sent_for_states_not_asked_for_or_without_urls(receiver):
    url = f"json://127.0.0.1:{receiver.port}/"
    assert notify_outcome(settings(url), report(UPDATED)) is None
    assert notify_outcome(settings(url), report()) is None
    assert notify_outcome(settings(), report(ROLLED_BACK)) is None
    assert receiver.requests == []


def test_a_form_receiver_gets_the_same_message(receiver):
    url = f"form://127.0.0.1:{receiver.port}/form"
    assert notify_outcome(settings(url), report(ROLLED_BACK)) is True
    [request] = receiver.requests
    fields = urllib.parse.parse_qs(request["body"])
    assert fields["type"] == ["warning"]
    assert "unit: container-web.service" in fields["message"][0]
    assert f"digest: {DIGEST}" in fields["message"][0]


def test_secrets_never_reach_the_message(receiver):
    url = f"json://127.0.0.1:{receiver.port}/"
    leaky = row(
        "web",
        "failed",
        f"pulling https://robot:{ENDPOINT_SECRET}@registry.example.com/v2/: the token {TOKEN} "
        "was refused",
    )
    assert notify_outcome(settings(url), report(leaky)) is True
    [request] = receiver.requests
    assert TOKEN not in request["body"] and ENDPOINT_SECRET not in request["body"]
    assert "robot" not in request["body"]
    assert "https://***@registry.example.com/v2/" in receiver.json_payloads()[0]["message"]


def test_a_failing_receiver_is_logged_and_never_raises(receiver, caplog):
    receiver.status = 500
    url = f"json://user:pa55word-x@127.0.0.1:{receiver.port}/path-token-abc"
    with caplog.at_level(logging.DEBUG):
        assert notify_outcome(settings(url), report(ROLLED_BACK)) is False
    assert len(receiver.requests) == 1
    assert any(
        r.name == "podhook.notify" and r.levelno == logging.WARNING and "push-0123" in r.message
        for r in caplog.records
    )
    assert "pa55word-x" not in caplog.text and "path-token-abc" not in caplog.text


def test_an_unreachable_receiver_is_logged_and_never_raises(caplog):
    from tests.conftest import free_port

    url = f"json://127.0.0.1:{free_port()}/"
    assert notify_outcome(settings(url), report(ROLLED_BACK)) is False
    assert "notification of job push-0123456789abcdef failed" in caplog.text


def test_urls_and_states_are_read_from_the_environment():
    loaded = load_settings(
        {
            "PODHOOK_NOTIFY_URLS": "json://127.0.0.1:1/a, form://127.0.0.1:2/b json://127.0.0.1:3/",
            "PODHOOK_NOTIFY_ON": "updated,failed, rolled_back",
        }
    )
    assert loaded.notify_urls == [
        "json://127.0.0.1:1/a",
        "form://127.0.0.1:2/b",
        "json://127.0.0.1:3/",
    ]
    assert loaded.notify_on == frozenset({"updated", "failed", "rolled_back"})
    defaults = load_settings({})
    assert defaults.notify_urls == [] and defaults.notify_on == {"failed", "rolled_back"}
    assert "127.0.0.1:1" not in repr(loaded)


def test_urls_and_states_are_read_from_the_settings_file(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text('notify_urls = ["json://127.0.0.1:1/"]\nnotify_on = ["failed"]\n')
    loaded = load_settings({"PODHOOK_CONFIG": str(config)})
    assert loaded.notify_urls == ["json://127.0.0.1:1/"] and loaded.notify_on == {"failed"}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PODHOOK_NOTIFY_ON": "failed,exploded"}, "notify_on: unknown state.*exploded"),
        ({"PODHOOK_NOTIFY_URLS": "json://127.0.0.1:1/ nosuch://s3cret@x"}, "entry 2"),
    ],
)
def test_bad_notification_settings_name_the_setting_but_not_the_secret(environ, named, caplog):
    with pytest.raises(SettingsError, match=named) as raised:
        load_settings(environ)
    assert "s3cret" not in str(raised.value) and "s3cret" not in caplog.text


def test_a_non_list_in_the_file_is_refused(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text("notify_urls = 3\n")
    with pytest.raises(SettingsError, match="notify_urls: expected a list of strings"):
        load_settings({"PODHOOK_CONFIG": str(config)})


def test_a_host_whose_podman_does_not_answer_is_recorded_and_told(
    receiver, redis, redis_url, monkeypatch, tmp_path
):
    from workers import audit
    from workers.jobs import TransientUpdateError, converge

    monkeypatch.setenv("PODHOOK_REDIS_URL", redis_url)
    monkeypatch.setenv("PODHOOK_HOST_ID", "web-9")
    monkeypatch.setenv("PODHOOK_PODMAN_URL", f"unix://{tmp_path}/absent.sock")
    monkeypatch.setenv("PODHOOK_SYSTEMD_BUS", "user")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/absent-bus")
    monkeypatch.setenv("PODHOOK_NOTIFY_URLS", f"json://127.0.0.1:{receiver.port}/")
    with pytest.raises(TransientUpdateError):
        converge("web-9", "registry.example.com/team/app:1.2")
    [outcome] = audit.read(redis, kind="outcome")
    recorded = JobReport.from_dict(outcome.data)
    assert recorded.host == "web-9" and recorded.rows == () and recorded.failed
    # Podman's socket or the systemd bus, whichever the job asked first: both are absent.
    assert recorded.error is not None and "absent" in recorded.error
    [message] = receiver.json_payloads()
    assert "registry.example.com/team/app:1.2 on web-9: failed" in message["title"]
    assert "cannot reach Podman or systemd" in message["message"]


def test_an_attempt_rq_retries_tells_its_updates_now_and_its_passing_failure_later(receiver, redis):
    from dataclasses import replace
    from types import SimpleNamespace

    from workers.jobs import TransientUpdateError, _conclude
    from workers.report import ContainerReport, UpdateState

    def container(name: str, state: UpdateState, reason: str, retryable: bool) -> ContainerReport:
        return ContainerReport(
            f"id-{name}",
            name,
            f"container-{name}.service",
            "r.example.com/app:1",
            "registry",
            state,
            reason,
            retryable=retryable,
        )

    rows = (
        container("api", UpdateState.UPDATED, "restarted on the new image", False),
        container("db", UpdateState.FAILED, "pulling: connection refused", True),
    )
    told = settings(f"json://127.0.0.1:{receiver.port}/", notify_on={"updated", "failed"})
    job = SimpleNamespace(retries_left=2)
    with pytest.raises(TransientUpdateError):
        _conclude(told, job, redis, replace(report(), rows=rows))
    [payload] = receiver.json_payloads()
    assert "container: api" in payload["message"]
    assert "container: db" not in payload["message"]  # told by the attempt that gives up


def test_a_reconcile_names_each_container_its_image_and_podmans_reason(receiver):
    url = f"json://127.0.0.1:{receiver.port}/"
    no_unit = row(
        "cron",
        "failed",
        'auto-updating container "id-cron": no PODMAN_SYSTEMD_UNIT label found',
        unit=None,
        image="registry.example.com/team/cron:1",
        old_image=None,
        new_image=None,
    )
    reconcile = JobReport.from_dict(
        {
            "host": "web-1",
            "kind": "reconcile",
            "reference": "*",
            "event": {},
            "job": "reconcile-0123456789abcdef",
            "containers": [no_unit, UPDATED],
        }
    )
    assert notify_outcome(settings(url), reconcile) is True
    [payload] = receiver.json_payloads()
    assert payload["type"] == "failure"
    assert payload["title"] == "podhook: reconcile on web-1: failed"
    message = payload["message"]
    for expected in (
        "host: web-1",
        "reconcile: every labeled container",
        "job: reconcile-0123456789abcdef",
        "container: cron",
        "unit: -",
        "image: registry.example.com/team/cron:1",
        "state: failed",
        'reason: auto-updating container "id-cron": no PODMAN_SYSTEMD_UNIT label found',
    ):
        assert expected in message, (expected, message)
    assert "None" not in payload["title"] + message and "digest:" not in message


def test_each_rollout_step_is_one_message_naming_the_hosts_and_the_failing_check(receiver, redis):
    from workers.hosts import register_host
    from workers.rollout_policy import parse_policies
    from workers.rollouts import HostState, record_host, start_rollout

    for host, ring in (("canary-1", "canary"), ("web-1", "main"), ("web-2", "main")):
        register_host(redis, host, labels={"ring": ring})
    [policy] = parse_policies(
        [{"soak": 60, "waves": [{"name": "canary", "hosts": "ring=canary"}, {"name": "rest"}]}]
    )
    told = settings(f"json://127.0.0.1:{receiver.port}/hook", status_url="https://podhook.example/")
    reference = "registry.example.com/team/app:1.2"
    rollout = start_rollout(redis, told, policy, reference, DIGEST, 1_900_000_000.0)
    record_host(
        redis,
        told,
        rollout,
        "canary-1",
        HostState.FAILED,
        "app: rolled_back: its health check `cat /healthy` failed",
        1_900_000_010.0,
    )
    started, halted = receiver.json_payloads()
    assert started["title"].endswith("wave canary started on 1 host: canary-1")
    assert "started for " + DIGEST in started["message"]
    assert "halted in wave canary: canary-1: app: rolled_back" in halted["title"]
    body = halted["message"]
    assert f"digest: {DIGEST}" in body and "its health check `cat /healthy` failed" in body
    assert "wave 2 rest (*): pending" in body and "  web-1: waiting" in body
    assert f"status: https://podhook.example/#rollout-{rollout.id}" in body
    assert TOKEN not in body
