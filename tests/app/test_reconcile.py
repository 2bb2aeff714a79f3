"""Reconciles asked for through the admin API, the status page and `podhook reconcile --host`,
and misconfigured containers made loud: a failed job, a notification, an unhealthy host in
`podhook status`, `/v1/hosts` and the page, until a later report clears it.

Real Redis, real RQ jobs and the real `workers.jobs.reconcile`; Podman and systemd are the
in-memory doubles of tests/unit/fakes.py (the job's decisions are what is tested here; the
integration tests run the same reconcile against the real services).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from harness import wait_for
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

import workers.jobs
from tests.app.test_api import ADMIN, AUTH, WEBHOOK, work
from tests.app.test_notify import Receiver
from tests.app.test_openapi import SPEC_PATH, schema_validator
from tests.conftest import free_port
from tests.unit.fakes import FakeRuntime, FakeUnits
from webhook.app import create_app
from webhook.cli import main
from workers import audit
from workers.fleet import (
    NoLiveHostError,
    StaleHostError,
    UnknownHostError,
    describe_hosts,
    find_problems,
    list_reconciles,
    request_reconciles,
)
from workers.hosts import register_host
from workers.inventory import publish_inventory
from workers.joblog import get_job
from workers.queueing import get_queue
from workers.update import UpdateOptions, Updater

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "d1" * 32
IMAGE = "registry.example.com/team/web:1"
NO_UNIT = 'auto-updating container "id-cron": no PODMAN_SYSTEMD_UNIT label found'
BAD_POLICY = 'invalid auto-update policy "nightly": valid policies are'


@pytest.fixture
def client(redis_url: str) -> Any:
    app = create_app(redis_url=redis_url, webhook_token=WEBHOOK, admin_token=ADMIN)
    return app.test_client()


@pytest.fixture
def hosts(redis: Redis) -> list[str]:
    """host-a and host-b beat now; host-old last beat ten minutes ago."""
    register_host(redis, "host-a")
    register_host(redis, "host-b")
    register_host(redis, "host-old", now=time.time() - 600)
    return ["host-a", "host-b", "host-old"]


def post(client: Any, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(
        "/v1/reconcile",
        data=data,
        headers={**AUTH, "Content-Type": "application/json", **headers},
    )


def queued_jobs(redis: Redis, host: str) -> list[Job]:
    return [
        job
        for job in Job.fetch_many(
            get_queue(redis, host).get_job_ids(), connection=redis, serializer=JSONSerializer
        )
        if job is not None
    ]


# --- the shared function ----------------------------------------------------------------------


def test_request_reconciles_joins_a_waiting_reconcile_and_queues_one_with_options(redis, hosts):
    first = request_reconciles(redis, ["host-a"], stale_after=150)
    again = request_reconciles(redis, ["host-a", "host-a"], stale_after=150)
    assert [q.duplicate for q in first.queued] == [False]
    assert [(q.job_id, q.duplicate) for q in again.queued] == [(first.queued[0].job_id, True)]
    dry = request_reconciles(redis, ["host-a"], stale_after=150, dry_run=True, rollback=False)
    assert not dry.queued[0].duplicate and dry.queued[0].job_id != first.queued[0].job_id
    jobs = queued_jobs(redis, "host-a")
    assert [job.func_name for job in jobs] == ["workers.jobs.reconcile"] * 2
    assert [job.args for job in jobs] == [["host-a"], ["host-a", True, False]]


def test_request_reconciles_of_every_host_leaves_stale_ones_out(redis, hosts):
    requested = request_reconciles(redis, None, stale_after=150)
    assert sorted(q.host for q in requested.queued) == ["host-a", "host-b"]
    assert list(requested.skipped) == ["host-old"]
    assert requested.skipped["host-old"].startswith("stale: no heartbeat for 6")
    assert queued_jobs(redis, "host-old") == []
    # With a longer host_stale_after, host-old is alive again.
    longer = request_reconciles(redis, None, stale_after=3600)
    assert sorted(q.host for q in longer.queued) == hosts and longer.skipped == {}


def test_request_reconciles_refuses_unknown_and_stale_hosts_before_queuing_any(redis, hosts):
    with pytest.raises(UnknownHostError, match="no such host: nosuch") as unknown:
        request_reconciles(redis, ["host-a", "nosuch"], stale_after=150)
    assert unknown.value.reasons == {"nosuch": "not registered"}
    with pytest.raises(StaleHostError, match="host-old is stale: no heartbeat for 6") as stale:
        request_reconciles(redis, ["host-b", "host-old"], stale_after=150)
    assert list(stale.value.reasons) == ["host-old"]
    assert queued_jobs(redis, "host-a") == [] and queued_jobs(redis, "host-b") == []


def test_request_reconciles_without_a_live_host(redis):
    with pytest.raises(NoLiveHostError, match="no host registered"):
        request_reconciles(redis, None, stale_after=150)
    register_host(redis, "host-old", now=time.time() - 600)
    with pytest.raises(NoLiveHostError, match="no live host") as raised:
        request_reconciles(redis, None, stale_after=150)
    assert list(raised.value.reasons) == ["host-old"]


# --- POST /v1/reconcile -----------------------------------------------------------------------


def test_reconcile_one_host_answers_202_with_its_job(client, redis, hosts):
    response = post(client, {"hosts": ["host-a"]})
    assert response.status_code == 202, response.json
    job_id = response.json["jobs"]["host-a"]["job"]
    assert response.json == {"jobs": {"host-a": {"job": job_id, "duplicate": False}}, "skipped": {}}
    [job] = queued_jobs(redis, "host-a")
    assert job.id == job_id and job.args == ["host-a"]
    # The job is readable through the API like any other.
    record = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json
    assert record["host"] == "host-a" and record["state"] == "queued"
    # Asked again while it waits: the same job.
    joined = post(client, {"hosts": ["host-a"]})
    assert joined.status_code == 202
    assert joined.json["jobs"]["host-a"] == {"job": job_id, "duplicate": True}
    assert len(queued_jobs(redis, "host-a")) == 1


def test_reconcile_several_hosts_as_a_dry_run(client, redis, hosts):
    response = post(client, {"hosts": ["host-a", "host-b"], "dry_run": True, "rollback": None})
    assert response.status_code == 202
    assert sorted(response.json["jobs"]) == ["host-a", "host-b"]
    for host in ("host-a", "host-b"):
        [job] = queued_jobs(redis, host)
        assert job.args == [host, True, None]
        assert job.id == response.json["jobs"][host]["job"]


def test_reconcile_all_live_hosts_says_which_it_left_out(client, redis, hosts):
    response = post(client, {"all": True, "rollback": False})
    assert response.status_code == 202
    assert sorted(response.json["jobs"]) == ["host-a", "host-b"]
    assert "stale" in response.json["skipped"]["host-old"]
    assert queued_jobs(redis, "host-old") == []
    assert queued_jobs(redis, "host-b")[0].args == ["host-b", None, False]


def test_unknown_host_is_404_and_stale_host_409_and_nothing_is_queued(client, redis, hosts):
    unknown = post(client, {"hosts": ["host-a", "nosuch"]})
    assert unknown.status_code == 404
    assert unknown.json["error"] == "no such host: nosuch"
    assert unknown.json["hosts"] == {"nosuch": "not registered"}
    stale = post(client, {"hosts": ["host-a", "host-old"]})
    assert stale.status_code == 409
    assert stale.json["error"].startswith("host-old is stale: no heartbeat for 6")
    assert list(stale.json["hosts"]) == ["host-old"]
    assert queued_jobs(redis, "host-a") == []


def test_all_without_a_live_host_is_409(client, redis):
    response = post(client, {"all": True})
    assert response.status_code == 409 and response.json["error"] == "no host registered"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"", "body: expected a JSON object"),
        (b"   ", "body: expected a JSON object"),
        (b"{not json", "body: not JSON"),
        (b"\xff\xfe", "body: not JSON"),
        (b"[" * 100000, "body: not JSON"),
        (["host-a"], "body: expected a JSON object"),
        ("null", "body: expected a JSON object"),
        ({}, "body: name the hosts or ask for all"),
        ({"all": False}, "body: name the hosts or ask for all"),
        ({"host": "host-a"}, "host: unknown field"),
        ({"hosts": "host-a"}, "hosts: expected a non-empty list"),
        ({"hosts": []}, "hosts: expected a non-empty list"),
        ({"hosts": ["host-a", 3]}, "hosts: expected a non-empty list"),
        ({"hosts": [" "]}, "hosts: expected a non-empty list"),
        ({"hosts": ["h"] * 1001}, "hosts: at most 1000"),
        ({"hosts": ["host-a"], "all": True}, "hosts: give hosts or all, not both"),
        ({"all": "true"}, 'all: expected true or false, got "true"'),
        ({"all": True, "dry_run": "yes"}, 'dry_run: expected true, false or null, got "yes"'),
        ({"all": True, "rollback": 0}, "rollback: expected true, false or null, got 0"),
    ],
)
def test_a_body_that_cannot_be_read_is_400_naming_the_field(client, redis, hosts, body, named):
    response = post(client, body)
    assert response.status_code == 400 and response.is_json, response.data[:200]
    assert response.json["error"].startswith(named), response.json
    assert all(queued_jobs(redis, host) == [] for host in hosts)


def test_a_query_parameter_is_refused(client, redis, hosts):
    response = client.post("/v1/reconcile?all=1", data=json.dumps({"all": True}), headers=AUTH)
    assert response.status_code == 400 and response.json["error"].startswith("all: unknown")


def test_reconcile_needs_the_admin_token(client, redis_url, redis, hosts):
    assert post(client, {"all": True}, Authorization="Bearer wrong").status_code == 401
    assert client.post("/v1/reconcile", json={"all": True}).status_code == 401
    disabled = create_app(redis_url=redis_url, admin_token=None).test_client()
    assert disabled.post("/v1/reconcile", json={"all": True}, headers=AUTH).status_code == 404
    assert all(queued_jobs(redis, host) == [] for host in hosts)


def test_reconcile_with_redis_down_is_503():
    app = create_app(redis_url=f"redis://127.0.0.1:{free_port()}/0", admin_token=ADMIN)
    response = post(app.test_client(), {"all": True})
    assert response.status_code == 503 and "Redis unavailable" in response.json["error"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"hosts": ["host-a"], "dry_run": True}, "202"),
        ({"all": True}, "202"),
        ({"hosts": "x"}, "400"),
        ({"hosts": ["nosuch"]}, "404"),
        ({"hosts": ["host-old"]}, "409"),
    ],
)
def test_reconcile_answers_match_the_openapi_schemas(client, redis, hosts, body, status):
    spec = yaml.safe_load(SPEC_PATH.read_text())
    response = post(client, body)
    assert str(response.status_code) == status
    schema_validator(spec, "/v1/reconcile", "post", status).validate(response.json)
    request_schema = spec["components"]["schemas"]["ReconcileRequest"]
    if status == "202":
        from jsonschema import Draft202012Validator

        Draft202012Validator(request_schema).validate(body)


# --- misconfigured containers, through the real reconcile job ---------------------------------


class Host:
    """One host's Podman and systemd, in memory, with the container set the test chooses."""

    def __init__(self) -> None:
        self.runtime = FakeRuntime()
        self.runtime.add_image("sha256:web", f"registry.example.com/team/web@{DIGEST}")
        self.runtime.add_image("sha256:cron")
        self.runtime.add_image("sha256:db")
        self.misconfigure()

    def misconfigure(self) -> None:
        self.runtime.containers = []
        self.runtime.run("web", IMAGE, "sha256:web", PODMAN_SYSTEMD_UNIT="container-web.service")
        self.runtime.run("cron", "registry.example.com/team/cron:1", "sha256:cron")
        self.runtime.run(
            "db",
            "registry.example.com/team/db:1",
            "sha256:db",
            PODMAN_SYSTEMD_UNIT="container-db.service",
            **{"io.containers.autoupdate": "nightly"},
        )

    def fix(self) -> None:
        """The operator fixes both: cron gets its unit, db a valid (local) policy."""
        self.runtime.containers = []
        self.runtime.run("web", IMAGE, "sha256:web", PODMAN_SYSTEMD_UNIT="container-web.service")
        self.runtime.run(
            "cron",
            "registry.example.com/team/cron:1",
            "sha256:cron",
            PODMAN_SYSTEMD_UNIT="container-cron.service",
            **{"io.containers.autoupdate": "local"},
        )
        self.runtime.run(
            "db",
            "registry.example.com/team/db:1",
            "sha256:db",
            PODMAN_SYSTEMD_UNIT="container-db.service",
            **{"io.containers.autoupdate": "local"},
        )

    def inventory(self) -> dict[str, Any]:
        return {
            "collected_at": time.time(),
            "containers": [
                {
                    "id": c.id,
                    "name": c.name,
                    "unit": c.unit,
                    "image": c.image_reference,
                    "image_id": c.image_id,
                    "policy": c.policy,
                }
                for c in self.runtime.containers
            ],
        }


class ClosingRuntime:
    """The in-memory runtime behind the real job's PodmanRuntime(url) call."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime

    def __call__(self, url: str) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)

    def close(self) -> None:
        pass


@pytest.fixture
def receiver() -> Any:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join(timeout=5)


@pytest.fixture
def host_a(redis, redis_url, monkeypatch, receiver) -> Host:
    """host-a registered, its workers' settings in the environment (notifications to the
    receiver), the job's Podman and systemd in memory, its registry naming DIGEST."""
    host = Host()
    for name, value in {
        "PODHOOK_REDIS_URL": redis_url,
        "PODHOOK_HOST_ID": "host-a",
        "PODHOOK_ADMIN_TOKEN": ADMIN,
        "PODHOOK_NOTIFY_URLS": f"json://127.0.0.1:{receiver.port}/",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(workers.jobs, "PodmanRuntime", ClosingRuntime(host.runtime))

    def build_updater(settings: Any, runtime: Any, locks: Any, **_: Any) -> Updater:
        return Updater(
            host.runtime, FakeUnits(host.runtime), locks, UpdateOptions.from_settings(settings)
        )

    monkeypatch.setattr(workers.jobs, "build_updater", build_updater)
    monkeypatch.setattr(workers.jobs, "registry_lookup", lambda settings: lambda ref, auth: DIGEST)
    register_host(redis, "host-a")
    publish_inventory(redis, "host-a", host.inventory())
    return host


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_a_misconfigured_container_fails_the_job_is_told_and_keeps_the_host_unhealthy(
    client, redis, host_a, receiver
):
    job_id = post(client, {"hosts": ["host-a"]}).json["jobs"]["host-a"]["job"]
    work(redis, "host-a")

    # The job failed, naming each container and Podman's reason.
    record = get_job(redis, job_id)
    assert record is not None and record.state == "failed"
    assert "UpdateFailedError" in record.error and NO_UNIT in record.error
    assert {r.container_name: r.state for r in record.report.rows} == {
        "web": "unchanged",
        "cron": "failed",
        "db": "failed",
    }

    # One notification, naming the containers and the reasons.
    [message] = receiver.json_payloads()
    assert message["type"] == "failure"
    assert message["title"] == "podhook: reconcile on host-a: failed"
    for expected in (
        "host: host-a",
        "reconcile: every labeled container",
        f"job: {job_id}",
        "container: cron",
        "image: registry.example.com/team/cron:1",
        f"reason: {NO_UNIT}",
        "container: db",
        BAD_POLICY,
    ):
        assert expected in message["message"], expected
    assert "container: web" not in message["message"]

    # The API's host view.
    [host] = client.get("/v1/hosts", headers=AUTH).json
    assert host["healthy"] is False and host["stale"] is False
    assert [(p["container"], p["state"], p["kind"], p["job"]) for p in host["problems"]] == [
        ("cron", "failed", "reconcile", job_id),
        ("db", "failed", "reconcile", job_id),
    ]
    assert host["problems"][0]["reason"] == NO_UNIT

    # podhook status: exit 1, one line per problem naming the container and the reason.
    status = cli("status")
    assert status.exit_code == 1, status.output
    problems = status.output.split("\nproblems\n")[1].split("\n\n")[0].splitlines()
    assert len(problems) == 2
    assert problems[0].startswith(f"  host-a: cron (no unit) failed in reconcile {job_id} at ")
    assert problems[0].endswith(f": {NO_UNIT}")
    assert f"reconcile on host-a: cron (-) failed: {NO_UNIT}" in status.output  # the history
    assert re.search(
        r"host-a: db \(container-db.service\) failed .*invalid auto-update policy", status.output
    )
    assert json.loads(cli("status", "--json").output)["healthy"] is False

    # The page.
    login_form = client.get("/").text
    [form_token] = re.findall(r'name="csrf" value="([^"]+)"', login_form)
    client.post("/login", data={"token": ADMIN, "csrf": form_token})
    page = client.get("/").text
    assert 'class="badge state-failing"' in page
    assert NO_UNIT.replace('"', "&#34;") in page
    reconciles = page.split('id="reconciles"')[1].split("</section>")[0]
    assert job_id in reconciles and "state-failed" in reconciles
    assert NO_UNIT.replace('"', "&#34;") in reconciles and "state-unchanged" in reconciles

    # Fixed: the next reconcile no longer fails, and the host is healthy again.
    host_a.fix()
    second = post(client, {"hosts": ["host-a"]}).json["jobs"]["host-a"]["job"]
    assert second != job_id
    work(redis, "host-a")
    assert get_job(redis, second).state == "finished"
    [host] = client.get("/v1/hosts", headers=AUTH).json
    assert host["healthy"] is True and host["problems"] == []
    healthy = cli("status")
    assert healthy.exit_code == 0, healthy.output
    assert "problems\n  none" in healthy.output
    page = client.get("/").text
    assert "state-failing" not in page
    reconciles = page.split('id="reconciles"')[1].split("</section>")[0]
    assert reconciles.index(second) < reconciles.index(job_id)  # newest first
    assert len(receiver.requests) == 1  # nothing failed the second time


def test_podhook_reconcile_host_goes_through_the_queue_and_exits_125(redis, redis_url, host_a):
    """`podhook reconcile --host` (a process of its own) queues through the shared function,
    waits while this test's worker runs the job, prints the rows and Podman's errors."""
    env = {**os.environ, "PODHOOK_REDIS_URL": redis_url, "PODHOOK_NOTIFY_URLS": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook.cli", "reconcile", "--host", "host-a", "--timeout", "60"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: get_queue(redis, "host-a").count, 30, "the CLI's reconcile job")
        [job] = queued_jobs(redis, "host-a")
        assert job.args == ["host-a"]  # no option given: a plain reconcile, which joins
        work(redis, "host-a")
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 125, (out, err)
    assert re.search(r"^HOST\s+UNIT\s+CONTAINER\s+IMAGE\s+POLICY\s+UPDATED", out, re.M)
    assert re.search(
        r"host-a\s+container-web.service\s+id-web \(web\)\s+\S+\s+registry\s+false", out
    )
    assert f"host-a: reconcile {job.id} queued" in err
    assert "Error: 2 errors occurred:" in err and f"cron: {NO_UNIT}" in err


def test_podhook_reconcile_refuses_unknown_and_stale_hosts(redis, redis_url, monkeypatch):
    monkeypatch.setenv("PODHOOK_REDIS_URL", redis_url)
    register_host(redis, "host-old", now=time.time() - 600)
    unknown = cli("reconcile", "--host", "nosuch")
    assert unknown.exit_code == 2 and "no such host: nosuch" in unknown.output
    stale = cli("reconcile", "--host", "host-old")
    assert stale.exit_code == 1 and "Error: host-old is stale: no heartbeat for" in stale.output
    none = cli("reconcile", "--all")
    assert none.exit_code == 1 and "no live host to reconcile" in none.output
    assert queued_jobs(redis, "host-old") == []


# --- problems: what clears them ---------------------------------------------------------------


def row(name: str, state: str, reason: str = "") -> dict[str, Any]:
    return {
        "container_name": name,
        "unit": f"container-{name}.service",
        "image": IMAGE,
        "state": state,
        "reason": reason or state,
    }


def outcome(redis: Redis, host: str, kind: str, *rows: dict[str, Any], **extra: Any) -> None:
    data = {
        "host": host,
        "kind": kind,
        "job": f"{kind}-{time.monotonic_ns()}",
        "containers": list(rows),
        **extra,
    }
    audit.record(redis, "outcome", data, 3600)
    time.sleep(0.002)  # stream ids are milliseconds: keep the order the test wrote


def problems_of(redis: Redis, host: str = "host-a") -> list[tuple[str, str]]:
    return [(p.container, p.state) for p in find_problems(redis, [host]).get(host, [])]


def test_the_newest_row_of_a_container_decides(redis):
    outcome(redis, "host-a", "reconcile", row("web", "failed"), row("api", "unchanged"))
    outcome(redis, "host-a", "converge", row("api", "rolled_back"))
    assert problems_of(redis) == [("api", "rolled_back"), ("web", "failed")]
    outcome(redis, "host-a", "converge", row("web", "updated"))
    assert problems_of(redis) == [("api", "rolled_back")]
    outcome(redis, "host-b", "converge", row("api", "updated"))  # another host's container
    assert problems_of(redis) == [("api", "rolled_back")]


def test_a_complete_reconcile_clears_containers_it_no_longer_lists(redis):
    outcome(redis, "host-a", "reconcile", row("web", "failed"), row("gone", "failed"))
    outcome(redis, "host-a", "reconcile", error="Podman: connection refused")
    assert problems_of(redis) == [("gone", "failed"), ("web", "failed")]  # it saw nothing
    outcome(redis, "host-a", "reconcile", row("web", "failed"))
    assert problems_of(redis) == [("web", "failed")]
    outcome(redis, "host-a", "reconcile")
    assert problems_of(redis) == []


def test_a_container_gone_from_the_current_inventory_is_no_problem(redis):
    register_host(redis, "host-a")
    outcome(redis, "host-a", "converge", row("web", "failed"), row("api", "failed"))
    names = [s.problems for s in describe_hosts(redis, stale_after=150)][0]
    assert [p.container for p in names] == ["api", "web"]  # no inventory yet: kept
    publish_inventory(
        redis, "host-a", {"collected_at": time.time(), "containers": [{"name": "web"}]}
    )
    [summary] = describe_hosts(redis, stale_after=150)
    assert [p.container for p in summary.problems] == ["web"] and not summary.healthy
    publish_inventory(
        redis, "host-a", {"collected_at": time.time(), "error": "Podman down", "containers": []}
    )
    [summary] = describe_hosts(redis, stale_after=150)
    assert [p.container for p in summary.problems] == ["api", "web"]  # unknown: kept


# --- the status page --------------------------------------------------------------------------


def logged_in(client: Any) -> str:
    """Log in and return the form token the page carries."""
    [login_token] = re.findall(r'name="csrf" value="([^"]+)"', client.get("/").text)
    assert client.post("/login", data={"token": ADMIN, "csrf": login_token}).status_code == 303
    page = client.get("/").text
    [token] = re.findall(r'name="csrf" value="([^"]+)"', page)[:1]
    return token


def test_the_page_offers_reconcile_to_live_hosts_only(client, redis, hosts):
    logged_in(client)
    page = client.get("/").text
    forms = re.findall(r'<form method="post" action="/reconcile".*?</form>', page, re.S)
    targets = [re.search(r'name="(host|all)" value="([^"]+)"', form).groups() for form in forms]
    assert targets == [("all", "1"), ("host", "host-a"), ("host", "host-b")]
    assert all('name="dry_run" value="1"' in form for form in forms)
    assert "Stale: its workers stopped beating" in page
    # One token per session, in every form.
    assert len(set(re.findall(r'name="csrf" value="([^"]+)"', page))) == 1


def test_the_page_reconciles_a_host_and_shows_the_job(client, redis, hosts):
    token = logged_in(client)
    response = client.post("/reconcile", data={"csrf": token, "host": "host-a"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/#reconciles"
    [job] = queued_jobs(redis, "host-a")
    assert job.args == ["host-a"]
    page = client.get("/").text
    assert f"Reconcile queued on host-a: {job.id}" in page
    section = page.split('id="reconciles"')[1].split("</section>")[0]
    assert "host-a" in section and "state-queued" in section and job.id in section
    # Shown once: the notice does not come back on the next refresh.
    assert f"Reconcile queued on host-a: {job.id}" not in client.get("/").text
    again = client.post("/reconcile", data={"csrf": token, "host": "host-a"})
    assert again.status_code == 303
    assert "joined the one already waiting" in client.get("/").text
    assert len(queued_jobs(redis, "host-a")) == 1


def test_the_page_checks_every_live_host(client, redis, hosts):
    token = logged_in(client)
    client.post("/reconcile", data={"csrf": token, "all": "1", "dry_run": "1"})
    for host in ("host-a", "host-b"):
        [job] = queued_jobs(redis, host)
        assert job.args == [host, True, None]
    page = client.get("/").text
    assert "Check (dry run) queued on host-a" in page and "Check (dry run) queued on host-b" in page
    assert "host-old left out: stale: no heartbeat for" in page
    assert queued_jobs(redis, "host-old") == []


def test_the_page_says_why_a_host_was_not_reconciled(client, redis, hosts):
    token = logged_in(client)
    for host, reason in (
        ("host-old", "host-old is stale: no heartbeat for"),
        ("nosuch", "no such host: nosuch"),
    ):
        assert client.post("/reconcile", data={"csrf": token, "host": host}).status_code == 303
        assert f"Reconcile not queued: {reason}" in client.get("/").text
    assert queued_jobs(redis, "host-old") == []


@pytest.mark.parametrize(
    "form",
    [
        {"host": "host-a"},
        {"host": "host-a", "csrf": ""},
        {"host": "host-a", "csrf": "forged"},
    ],
)
def test_the_page_refuses_a_reconcile_without_the_form_token(client, redis, hosts, form):
    logged_in(client)
    response = client.post("/reconcile", data=form)
    assert response.status_code == 403 and "Refused" in response.text
    assert queued_jobs(redis, "host-a") == []


def test_the_page_refuses_a_reconcile_without_a_session(client, redis_url, redis, hosts):
    token = logged_in(client)
    fresh = create_app(redis_url=redis_url, admin_token=ADMIN).test_client()
    response = fresh.post("/reconcile", data={"csrf": token, "host": "host-a"})
    assert response.status_code == 401 and 'name="token"' in response.text
    # Bearer tokens open the API, not the page's actions.
    with_bearer = fresh.post("/reconcile", data={"host": "host-a"}, headers=AUTH)
    assert with_bearer.status_code == 401
    disabled = create_app(redis_url=redis_url, admin_token=None).test_client()
    assert disabled.post("/reconcile", data={"host": "host-a"}).status_code == 404
    assert queued_jobs(redis, "host-a") == []


@pytest.mark.parametrize("form", [{}, {"host": "host-a", "all": "1"}, {"host": " "}])
def test_the_page_wants_one_host_or_all(client, redis, hosts, form):
    token = logged_in(client)
    response = client.post("/reconcile", data={"csrf": token, **form})
    assert response.status_code == 400 and "Name one host, or all hosts." in response.text
    assert all(queued_jobs(redis, host) == [] for host in hosts)


def test_a_new_login_gets_a_new_form_token(client, redis, hosts):
    first = logged_in(client)
    assert client.post("/logout", data={"csrf": first}).status_code == 303
    second = logged_in(client)
    assert first != second
    assert client.post("/reconcile", data={"csrf": first, "host": "host-a"}).status_code == 403


def report_reconcile(host: str, *args: Any) -> dict[str, Any]:
    """A reconcile job's stand-in: saves a reconcile report twice, as a retried job would."""
    from rq import get_current_job

    from workers.queueing import release_reconcile

    job = get_current_job()
    release_reconcile(job.connection, host)  # as the real job does when it starts
    report = {
        "host": host,
        "kind": "reconcile",
        "job": job.id,
        "containers": [row("web", "unchanged")],
    }
    job.meta["report"] = report
    job.save_meta()
    for _ in range(2):
        audit.record(job.connection, "outcome", report, 3600)
        time.sleep(0.002)
    return report


def test_list_reconciles_waiting_first_then_reported_newest_first(redis, hosts):
    done = []
    for host in hosts[:2]:
        done.append(request_reconciles(redis, [host], stale_after=150).queued[0].job_id)
        [job] = queued_jobs(redis, host)
        assert job.args == [host]  # loads the stored call before it is rewritten
        job.func_name = "tests.app.test_reconcile.report_reconcile"
        job.save()
        work(redis, host)
    outcome(redis, "host-a", "converge", row("web", "updated"))  # not a reconcile
    waiting = request_reconciles(redis, ["host-a"], stale_after=150).queued[0].job_id
    found = list_reconciles(redis, limit=10)
    assert [r.id for r in found] == [waiting, done[1], done[0]]
    assert [r.state for r in found] == ["queued", "finished", "finished"]
    assert found[1].report.rows[0].container_name == "web"
    assert [r.id for r in list_reconciles(redis, limit=2)] == [waiting, done[1]]


def test_problems_older_than_the_first_read_are_found(redis, monkeypatch):
    import workers.fleet

    monkeypatch.setattr(workers.fleet, "PROBLEM_FIRST_READ", 2)
    outcome(redis, "host-a", "converge", row("api", "failed"))
    outcome(redis, "host-a", "reconcile", row("web", "failed"))
    for _ in range(3):
        outcome(redis, "host-b", "reconcile", row("db", "unchanged"))
    assert problems_of(redis) == [("web", "failed")]  # the reconcile decides for api too
    assert find_problems(redis, ["host-a", "host-b"]) == {
        "host-a": find_problems(redis, ["host-a"])["host-a"]
    }
