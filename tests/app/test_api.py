"""The admin API, the page's login and the fleet summary, against a real Redis and real RQ jobs."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker, Worker, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

import workers.jobs
from tests.conftest import free_port
from webhook.app import create_app
from workers import audit
from workers.events import PushEvent
from workers.fleet import describe_fleet, describe_hosts, list_updates
from workers.hosts import register_host
from workers.inventory import publish_inventory
from workers.queueing import get_queue
from workers.report import FAILURE_STATES, ContainerReport, UpdateState, summarize

ADMIN = "admin-token-for-tests"
WEBHOOK = "webhook-token-for-tests"
REGISTRY = "registry.example.com"
DISTRIBUTION_TYPE = "application/vnd.docker.distribution.events.v1+json"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
REASON_FAILED = "restarting 'container-web.service' for container 'web': job result 'failed'"

# What the stand-in job reports for a pushed tag: the state of the one container it touches.
SCRIPT = {
    "1.0": (UpdateState.UPDATED, "now runs sha256:new"),
    "1.1": (UpdateState.UNCHANGED, "already runs the pushed digest"),
    "2.0": (UpdateState.FAILED, REASON_FAILED),
    "2.1": (UpdateState.ROLLED_BACK, "new image did not stay active; previous image restored"),
    "3.0": (UpdateState.SKIPPED, "short name 'app:3.0' depends on the search list"),
}


def fake_converge(host: str, reference: str) -> dict[str, Any]:
    """Stands in for workers.jobs.converge: the same report, in job meta and the audit trail,
    with a scripted container row instead of Podman and systemd."""
    job = get_current_job()
    assert job is not None
    event = PushEvent.from_dict(job.meta["event"])
    state, reason = SCRIPT[event.tag]
    started = time.time()
    row = ContainerReport(
        container_id="c0ffee" * 4,
        container_name="web",
        unit="container-web.service",
        image=event.reference,
        policy="registry",
        state=state,
        reason=reason,
        old_image="sha256:old",
        new_image="sha256:new" if state is UpdateState.UPDATED else None,
        timings={"pulled": 0.5, "restarted": 1.0, "finished": 1.5},
    )
    report = {
        "host": host,
        "kind": "converge",
        "reference": reference,
        "event": event.to_dict(),
        "started_at": started,
        "finished_at": time.time(),
        "containers": [row.to_dict()],
        "summary": summarize([row]),
        "job": job.id,
    }
    job.meta["report"] = report
    job.save_meta()
    audit.record(job.connection, "outcome", report, 3600)
    if state in FAILURE_STATES:
        job.retries_left = 0
        raise workers.jobs.UpdateFailedError(f"web: {state.value}: {reason}")
    return report


def delivery_body(repository: str, tag: str, digest: str) -> bytes:
    """A CNCF distribution notification for one manifest push."""
    event = {
        "id": str(uuid.uuid4()),
        "timestamp": "2026-11-29T09:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "repository": repository,
            "tag": tag,
            "url": f"https://{REGISTRY}/v2/{repository}/manifests/{digest}",
        },
        "request": {"id": "r1", "host": REGISTRY, "method": "PUT"},
    }
    return json.dumps({"events": [event]}).encode()


def digest_of(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def push(client: Any, repository: str, tag: str) -> list[str]:
    """Deliver a push through the real webhook route; returns the ids of the jobs it queued."""
    response = client.post(
        "/v1/webhooks/distribution",
        data=delivery_body(repository, tag, digest_of(f"{repository}:{tag}")),
        headers={"Content-Type": DISTRIBUTION_TYPE, "Authorization": f"Bearer {WEBHOOK}"},
    )
    assert response.status_code in (200, 202), response.json
    return list(response.json["queued"])


def work(redis: Redis, host: str) -> None:
    """Run every job queued for ``host`` in this process with an RQ SimpleWorker."""
    worker = SimpleWorker([get_queue(redis, host)], connection=redis, serializer=JSONSerializer)
    worker.work(burst=True)


def by_host(redis: Redis, job_ids: list[str]) -> dict[str, str]:
    jobs = Job.fetch_many(job_ids, connection=redis, serializer=JSONSerializer)
    return {job.meta["host"]: job.id for job in jobs if job is not None}


def seed(client: Any, redis: Redis) -> dict[str, str]:
    """Two hosts, four pushes, each queued on both. host-a's workers ran the first three
    (updated, failed, rolled back); the fourth waits on both hosts, and host-b has run nothing.
    Returns job ids by outcome name, host-b's with a ``_b`` suffix."""
    ids = {}
    for name, repository, tag in (
        ("updated", "team/web", "1.0"),
        ("failed", "team/web", "2.0"),
        ("rolled_back", "team/api", "2.1"),
    ):
        queued = by_host(redis, push(client, repository, tag))
        ids[name], ids[f"{name}_b"] = queued["host-a"], queued["host-b"]
    work(redis, "host-a")
    queued = by_host(redis, push(client, "team/api", "1.1"))
    ids["queued"], ids["queued_b"] = queued["host-a"], queued["host-b"]
    return ids


@pytest.fixture(autouse=True)
def stand_in_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # SimpleWorker runs jobs in this process and resolves "workers.jobs.converge" by import.
    monkeypatch.setattr(workers.jobs, "converge", fake_converge)


@pytest.fixture
def app(redis_url: str) -> Any:
    return create_app(
        redis_url=redis_url, webhook_token=WEBHOOK, admin_token=ADMIN, host_id="host-a"
    )


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def hosts(redis: Redis) -> list[str]:
    register_host(redis, "host-a")
    register_host(redis, "host-b")
    return ["host-a", "host-b"]


@pytest.fixture
def jobs(client: Any, redis: Redis, hosts: list[str]) -> dict[str, str]:
    return seed(client, redis)


def get(client: Any, path: str, **query: Any) -> Any:
    return client.get(path, query_string=query, headers=AUTH)


# --- authentication ---------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/push-0"),
    ("POST", "/v1/jobs/push-0/retry"),
    ("POST", "/v1/jobs/push-0/cancel"),
    ("GET", "/v1/hosts"),
    ("GET", "/v1/updates"),
    ("POST", "/v1/reconcile"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing Authorization"),
        (f"Bearer wrong-{ADMIN}", "wrong admin token"),
        (f"Bearer {WEBHOOK}", "wrong admin token"),
        (f"Basic {ADMIN}", "missing Authorization"),
        ("Bearer", "missing Authorization"),
        (f"bearer {ADMIN}x", "wrong admin token"),
    ],
)
def test_missing_or_wrong_admin_token_is_401(client, redis, method, path, header, reason):
    headers = {"Authorization": header} if header else {}
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == 401 and response.is_json
    assert reason in response.json["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_without_an_admin_token_the_api_is_404_never_open(redis_url, redis, method, path):
    client = create_app(redis_url=redis_url, webhook_token=WEBHOOK, admin_token=None).test_client()
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 404
        assert response.json["error"] == "admin API disabled; set PODHOOK_ADMIN_TOKEN"


def test_the_scheme_is_case_insensitive(client, redis):
    response = client.get("/v1/jobs", headers={"Authorization": f"bearer {ADMIN}"})
    assert response.status_code == 200 and response.json == []


def test_openapi_is_served_without_a_token(redis_url, redis):
    for token in (ADMIN, None):
        client = create_app(redis_url=redis_url, admin_token=token).test_client()
        response = client.get("/openapi.yaml")
        assert response.status_code == 200
        assert response.mimetype == "application/yaml"
        assert response.text.startswith("openapi: 3.1")


# --- jobs -------------------------------------------------------------------------------------


def test_jobs_lists_every_host_newest_first(client, redis, jobs):
    response = get(client, "/v1/jobs")
    assert response.status_code == 200
    listed = response.json
    assert {j["id"] for j in listed} == set(jobs.values())
    stamps = [j["enqueued_at"] for j in listed]
    assert stamps == sorted(stamps, reverse=True)
    by_id = {j["id"]: j for j in listed}
    updated = by_id[jobs["updated"]]
    assert updated["state"] == "finished" and updated["host"] == "host-a"
    assert updated["event"]["repository"] == "team/web" and updated["event"]["tag"] == "1.0"
    assert updated["report"]["containers"][0]["state"] == "updated"
    failed = by_id[jobs["failed"]]
    assert failed["state"] == "failed" and "UpdateFailedError" in failed["error"]
    assert failed["report"]["containers"][0]["reason"] == REASON_FAILED
    assert (
        by_id[jobs["queued_b"]]["state"] == "queued" and by_id[jobs["queued_b"]]["report"] is None
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"host": "host-b"}, {"updated_b", "failed_b", "rolled_back_b", "queued_b"}),
        ({"state": "failed"}, {"failed", "rolled_back"}),
        ({"state": "queued", "host": "host-a"}, {"queued"}),
        ({"state": "finished"}, {"updated"}),
        ({"image": "team/web"}, {"updated", "updated_b", "failed", "failed_b"}),
        ({"image": f"{REGISTRY}/team/api:2.1"}, {"rolled_back", "rolled_back_b"}),
        ({"image": "nothing-like-it"}, set()),
        ({"host": "no-such-host"}, set()),
    ],
)
def test_jobs_filters(client, redis, jobs, query, expected):
    response = get(client, "/v1/jobs", **query)
    assert response.status_code == 200, response.json
    assert {j["id"] for j in response.json} == {jobs[name] for name in expected}


def test_jobs_since_takes_iso_8601_and_unix_seconds(client, redis, jobs):
    newest = get(client, "/v1/jobs", limit=1).json[0]
    moment = datetime.fromisoformat(newest["enqueued_at"])
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    for since in (
        moment.isoformat(),
        moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        str(moment.timestamp()),
    ):
        found = get(client, "/v1/jobs", since=since).json
        assert {j["enqueued_at"] for j in found} == {newest["enqueued_at"]}, since
    assert len(get(client, "/v1/jobs", since="2000-01-01").json) == len(jobs)
    assert get(client, "/v1/jobs", since="4000-01-01T00:00:00+00:00").json == []


def test_jobs_limit(client, redis, jobs):
    assert len(get(client, "/v1/jobs", limit=2).json) == 2
    assert len(get(client, "/v1/jobs", limit=1000).json) == len(jobs)


def test_one_job(client, redis, jobs):
    response = get(client, f"/v1/jobs/{jobs['rolled_back']}")
    assert response.status_code == 200
    assert response.json["state"] == "failed"
    [row] = response.json["report"]["containers"]
    assert row["state"] == "rolled_back" and row["unit"] == "container-web.service"


@pytest.mark.parametrize(
    "job_id", ["push-" + "0" * 32, "nosuch", "a:b", "..", "%2e%2e", "x" * 5000, "caf\u00e9", "a b"]
)
def test_unknown_or_impossible_job_is_404(client, redis, jobs, job_id):
    for method, suffix in (("GET", ""), ("POST", "/retry"), ("POST", "/cancel")):
        response = client.open(f"/v1/jobs/{job_id}{suffix}", method=method, headers=AUTH)
        assert response.status_code == 404 and response.is_json, (method, job_id)


def test_retry_requeues_a_failed_job(client, redis, jobs):
    response = client.post(f"/v1/jobs/{jobs['failed']}/retry", headers=AUTH)
    assert response.status_code == 200, response.json
    assert response.json["state"] == "queued"
    assert jobs["failed"] in get_queue(redis, "host-a").get_job_ids()
    assert jobs["failed"] not in get_queue(redis, "host-a").failed_job_registry.get_job_ids()


@pytest.mark.parametrize(("name", "state"), [("updated", "finished"), ("queued", "queued")])
def test_retry_of_a_job_that_did_not_fail_is_409(client, redis, jobs, name, state):
    response = client.post(f"/v1/jobs/{jobs[name]}/retry", headers=AUTH)
    assert response.status_code == 409
    assert state in response.json["error"].lower() and "only failed" in response.json["error"]


def test_cancel_a_waiting_job(client, redis, jobs):
    response = client.post(f"/v1/jobs/{jobs['queued_b']}/cancel", headers=AUTH)
    assert response.status_code == 200, response.json
    assert response.json["state"] == "canceled"
    assert jobs["queued_b"] not in get_queue(redis, "host-b").get_job_ids()
    again = client.post(f"/v1/jobs/{jobs['queued_b']}/cancel", headers=AUTH)
    assert again.status_code == 409 and "canceled" in again.json["error"].lower()


@pytest.mark.parametrize(("name", "state"), [("updated", "finished"), ("failed", "failed")])
def test_cancel_of_a_job_that_is_not_waiting_is_409(client, redis, jobs, name, state):
    response = client.post(f"/v1/jobs/{jobs[name]}/cancel", headers=AUTH)
    assert response.status_code == 409
    assert state in response.json["error"].lower() and "only waiting" in response.json["error"]


def test_a_started_job_is_not_cancelled(client, redis, hosts):
    job_id = by_host(redis, push(client, "team/web", "1.0"))["host-a"]
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    job.set_status("started")
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert response.status_code == 409 and "started" in response.json["error"].lower()


# --- hosts ------------------------------------------------------------------------------------


def test_hosts_with_heartbeat_queue_workers_failures_and_containers(client, redis, jobs):
    register_host(redis, "host-b", now=time.time() - 400)
    containers = [
        {
            "id": "c1",
            "name": "web",
            "unit": "container-web.service",
            "image": f"{REGISTRY}/team/web:1.0",
            "image_id": "sha256:abc",
            "policy": "registry",
        }
    ]
    publish_inventory(redis, "host-a", {"collected_at": time.time(), "containers": containers})
    listener = Worker(
        [get_queue(redis, "host-a")], connection=redis, serializer=JSONSerializer, name="w-a"
    )
    listener.register_birth()
    try:
        response = get(client, "/v1/hosts")
    finally:
        listener.register_death()
    assert response.status_code == 200
    a, b = response.json
    assert a["host"] == "host-a" and b["host"] == "host-b"
    assert a["queued"] == 1 and a["failed"] == 2 and a["workers"] == 1
    assert a["containers"] == containers and a["inventory_error"] is None
    assert a["heartbeat_age"] < 60 and a["stale"] is False
    assert b["queued"] == 4 and b["failed"] == 0 and b["workers"] == 0
    assert b["containers"] is None
    assert 399 <= b["heartbeat_age"] < 460 and b["stale"] is True


def test_hosts_when_podman_did_not_answer(client, redis, hosts):
    publish_inventory(
        redis,
        "host-a",
        {"collected_at": 1.0, "error": "Podman: connection refused", "containers": []},
    )
    a = get(client, "/v1/hosts").json[0]
    assert a["containers"] == [] and a["inventory_error"] == "Podman: connection refused"


def test_no_hosts(client, redis):
    assert get(client, "/v1/hosts").json == []


# --- updates ----------------------------------------------------------------------------------


def test_updates_tell_what_happened_to_each_push(client, redis, jobs):
    response = get(client, "/v1/updates")
    assert response.status_code == 200
    updates = response.json
    assert len(updates) == 4
    times = [u["time"] for u in updates]
    assert times == sorted(times, reverse=True)
    newest, rolled_back, failed, updated = updates
    for update in updates:
        assert update["endpoint"] == "distribution" and update["source"] == "distribution"
        assert update["received_at"] <= update["queued_at"]
        assert {j["host"] for j in update["jobs"]} == {"host-a", "host-b"}
    # Not worked yet: queued on both hosts, no outcome.
    assert {j["state"] for j in newest["jobs"]} == {"queued"}
    assert all(j["outcomes"] == [] for j in newest["jobs"])
    [job] = [j for j in failed["jobs"] if j["host"] == "host-a"]
    assert job["job"] == jobs["failed"] and job["state"] == "failed"
    assert job["reference"] == f"{REGISTRY}/team/web:2.0"
    assert job["digest"] == digest_of("team/web:2.0")
    [outcome] = job["outcomes"]
    [row] = outcome["containers"]
    assert row["state"] == "failed" and row["reason"] == REASON_FAILED
    assert row["old_image"] == "sha256:old" and row["new_image"] is None
    assert row["timings"] == {"pulled": 0.5, "restarted": 1.0, "finished": 1.5}
    assert outcome["summary"]["failed"] == 1
    assert outcome["started_at"] <= outcome["finished_at"]
    [job] = [j for j in updated["jobs"] if j["host"] == "host-a"]
    assert job["state"] == "finished"
    assert job["outcomes"][0]["containers"][0]["new_image"] == "sha256:new"
    [job_b] = [j for j in updated["jobs"] if j["host"] == "host-b"]
    assert job_b["state"] == "queued" and job_b["outcomes"] == []
    assert rolled_back["jobs"][0]["reference"] == f"{REGISTRY}/team/api:2.1"


def test_a_retried_job_shows_every_attempt_newest_first(client, redis, jobs, monkeypatch):
    SCRIPT_AFTER_FIX = {**SCRIPT, "2.0": (UpdateState.UPDATED, "now runs sha256:new")}
    monkeypatch.setitem(globals(), "SCRIPT", SCRIPT_AFTER_FIX)
    assert client.post(f"/v1/jobs/{jobs['failed']}/retry", headers=AUTH).status_code == 200
    work(redis, "host-a")
    [update] = get(client, "/v1/updates", image="team/web:2.0", host="host-a").json
    [job] = update["jobs"]
    assert job["state"] == "finished"
    assert [o["containers"][0]["state"] for o in job["outcomes"]] == ["updated", "failed"]


@pytest.mark.parametrize(
    ("query", "references"),
    [
        ({"image": "team/web"}, ["team/web:2.0", "team/web:1.0"]),
        ({"image": "team/api:2.1"}, ["team/api:2.1"]),
        ({"image": "nothing-like-it"}, []),
        ({"limit": 2}, ["team/api:1.1", "team/api:2.1"]),
        ({"image": "team", "limit": 3}, ["team/api:1.1", "team/api:2.1", "team/web:2.0"]),
    ],
)
def test_updates_filters(client, redis, jobs, query, references):
    updates = get(client, "/v1/updates", **query).json
    found = [u["jobs"][0]["reference"].removeprefix(f"{REGISTRY}/") for u in updates]
    assert found == references


def test_updates_of_one_host_keep_its_jobs_only(client, redis, jobs):
    updates = get(client, "/v1/updates", host="host-b").json
    assert len(updates) == 4
    assert {j["host"] for u in updates for j in u["jobs"]} == {"host-b"}
    assert get(client, "/v1/updates", host="no-such-host").json == []


def test_updates_since(client, redis, jobs):
    updates = get(client, "/v1/updates").json
    second = updates[1]["time"]
    since_unix = get(client, "/v1/updates", since=str(second)).json
    assert [u["id"] for u in since_unix] == [u["id"] for u in updates[:2]]
    iso = datetime.fromtimestamp(second, tz=UTC).isoformat()
    assert [u["id"] for u in get(client, "/v1/updates", since=iso).json] == [
        u["id"] for u in updates[:2]
    ]
    assert len(get(client, "/v1/updates", since="0").json) == 4
    assert len(get(client, "/v1/updates", since="-5").json) == 4
    assert get(client, "/v1/updates", since="9999-12-31T00:00:00Z").json == []


def test_an_expired_job_keeps_its_story(client, redis, jobs):
    Job.fetch(jobs["updated"], connection=redis, serializer=JSONSerializer).delete()
    [update] = get(client, "/v1/updates", image="team/web:1.0", host="host-a").json
    [job] = update["jobs"]
    assert job["state"] is None and job["outcomes"][0]["containers"][0]["state"] == "updated"


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "named"),
    [
        ("/v1/jobs", {"state": "bogus"}, "state"),
        ("/v1/jobs", {"state": ""}, "state"),
        ("/v1/jobs", {"limit": "0"}, "limit"),
        ("/v1/jobs", {"limit": "-1"}, "limit"),
        ("/v1/jobs", {"limit": "1001"}, "limit"),
        ("/v1/jobs", {"limit": "ten"}, "limit"),
        ("/v1/jobs", {"limit": "1.5"}, "limit"),
        ("/v1/jobs", {"limit": ""}, "limit"),
        ("/v1/jobs", {"since": "yesterday"}, "since"),
        ("/v1/jobs", {"since": ""}, "since"),
        ("/v1/jobs", {"since": "nan"}, "since"),
        ("/v1/jobs", {"since": "inf"}, "since"),
        ("/v1/jobs", {"since": "1e300"}, "since"),
        ("/v1/jobs", {"since": "2026-13-01"}, "since"),
        ("/v1/jobs", {"stat": "failed"}, "stat"),
        ("/v1/updates", {"state": "failed"}, "state"),
        ("/v1/updates", {"limit": "99999999999999999999"}, "limit"),
        ("/v1/updates", {"since": "12:00"}, "since"),
        ("/v1/hosts", {"host": "a"}, "host"),
        ("/v1/jobs/push-0", {"verbose": "1"}, "verbose"),
    ],
)
def test_bad_query_is_400_naming_the_parameter(client, redis, hosts, path, query, named):
    response = get(client, path, **query)
    assert response.status_code == 400 and response.is_json, response.json
    assert response.json["error"].startswith(f"{named}:")


def test_a_parameter_given_twice_is_400(client, redis):
    response = client.get("/v1/jobs?host=a&host=b", headers=AUTH)
    assert response.status_code == 400 and response.json["error"].startswith("host:")


JUNK = [
    "",
    "?",
    "?&&&",
    "?=",
    "?host=%00",
    "?host=" + "h" * 10000,
    "?image=%ff%fe",
    "?image=*[](){}\\",
    "?since=%00",
    "?since=0001-01-01T00:00:00%2B14:00",
    "?since=9999-12-31T23:59:59-14:00",
    "?since=-1e20",
    "?since=1e18",
    "?since=--",
    "?limit=%EF%BC%91",  # a full-width digit one, which int() accepts
    "?limit=1_0",
    "?limit= 5",
    "?since=2026-01-01T00:00:00%2B25:00",
]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/updates", "/v1/hosts"])
@pytest.mark.parametrize("query", JUNK)
def test_no_query_gets_a_500(client, redis, jobs, path, query):
    response = client.get(path + query, headers=AUTH)
    assert response.status_code in (200, 400), (path, query, response.json)
    assert response.is_json


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_wrong_method_is_json_405(client, redis, method):
    response = client.open("/v1/jobs", method=method, headers=AUTH)
    assert response.status_code == 405 and response.is_json


def test_unreachable_redis_is_503():
    client = create_app(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", admin_token=ADMIN
    ).test_client()
    for method, path in PROTECTED:
        body = json.dumps({"all": True}) if path == "/v1/reconcile" else None
        response = client.open(path, method=method, headers=AUTH, data=body)
        assert response.status_code == 503 and response.is_json, path
        assert "Redis unavailable" in response.json["error"]


# --- the page's login -------------------------------------------------------------------------


def form_token(client: Any) -> str:
    """The form token of the page the client has open (the login form or the status page)."""
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/").text)
    return found.group(1) if found else ""


def login(client: Any, token: str = ADMIN) -> Any:
    """Post the login form as a browser does: with the form token of the form it came from."""
    return client.post("/login", data={"token": token, "csrf": form_token(client)})


def test_page_without_admin_token_is_404_with_a_note(redis_url, redis):
    client = create_app(redis_url=redis_url, admin_token=None).test_client()
    for response in (client.get("/"), login(client), client.post("/logout")):
        assert response.status_code == 404
        assert "PODHOOK_ADMIN_TOKEN" in response.text and response.mimetype == "text/html"
    assert "Set-Cookie" not in client.get("/").headers


def test_page_asks_for_the_token_without_a_session(client, redis, jobs):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert 'name="token"' in response.text and 'type="password"' in response.text
    assert "host-a" not in response.text
    assert 'http-equiv="refresh"' not in response.text  # would wipe a half-typed token
    # The bearer token does not open the page: a browser session does.
    assert "host-a" not in client.get("/", headers=AUTH).text


def test_wrong_token_shows_the_form_again_with_401(client, redis):
    response = login(client, "wrong")
    assert response.status_code == 401 and "Wrong token" in response.text
    assert "Set-Cookie" not in response.headers
    assert login(client, "").status_code == 401
    assert client.post("/login").status_code == 403  # no form token


def test_login_sets_a_strict_httponly_session_and_logout_ends_it(client, redis, jobs):
    response = login(client)
    assert response.status_code == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ADMIN not in cookie
    page = client.get("/")
    assert page.status_code == 200
    assert "host-a" in page.text and "host-b" in page.text
    assert 'http-equiv="refresh" content="10"' in page.text
    assert REASON_FAILED.replace("'", "&#39;") in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    out = client.post("/logout", data={"csrf": form_token(client)})
    assert out.status_code == 303
    assert 'name="token"' in client.get("/").text


def test_changing_the_admin_token_ends_every_session(redis_url, redis):
    first = create_app(redis_url=redis_url, admin_token=ADMIN).test_client()
    login(first)
    cookie = first.get_cookie("session")
    assert cookie is not None
    second = create_app(redis_url=redis_url, admin_token="another-" + ADMIN).test_client()
    second.set_cookie("session", cookie.value)
    assert 'name="token"' in second.get("/").text
    same = create_app(redis_url=redis_url, admin_token=ADMIN).test_client()
    same.set_cookie("session", cookie.value)
    assert 'name="token"' not in same.get("/").text


def test_page_says_when_redis_is_down(redis_url, redis):
    up = create_app(redis_url=redis_url, admin_token=ADMIN).test_client()
    login(up)
    cookie = up.get_cookie("session")
    assert cookie is not None
    client = create_app(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", admin_token=ADMIN
    ).test_client()
    client.set_cookie("session", cookie.value)
    response = client.get("/")
    assert response.status_code == 503 and "Redis unavailable" in response.text


def test_page_with_nothing_registered(client, redis):
    login(client)
    text = client.get("/").text
    assert "No host has registered" in text and "No push received yet" in text


# --- the fleet --------------------------------------------------------------------------------


def test_describe_hosts_ages_heartbeats_from_now(redis):
    register_host(redis, "host-a", now=1000.0)
    [summary] = describe_hosts(redis, stale_after=150, now=1012.5)
    assert summary.heartbeat_age == 12.5 and not summary.stale
    assert describe_hosts(redis, stale_after=150, now=2000.0)[0].stale


def test_staleness_shown_is_the_one_routing_uses(redis):
    """A host 200 s silent is stale with the default 150 s, alive with host_stale_after=300:
    shown as routing treats it."""
    from workers.routing import route_push

    register_host(redis, "host-a", now=1000.0)
    for stale_after, stale in ((150, True), (300, False)):
        [summary] = describe_hosts(redis, stale_after=stale_after, now=1200.0)
        routed = route_push(
            redis, "r.example.com/app:1", stale_after=stale_after, inventory_max_age=120, now=1200.0
        )
        assert summary.stale is stale and routed == ([] if stale else ["host-a"])


def test_hosts_staleness_follows_the_host_stale_after_setting(redis_url, redis):
    register_host(redis, "host-a", now=time.time() - 200)
    for stale_after, stale in ((150, True), (300, False)):
        client = create_app(
            redis_url=redis_url, admin_token=ADMIN, host_stale_after=stale_after
        ).test_client()
        [host] = get(client, "/v1/hosts").json
        assert host["stale"] is stale and host["healthy"] is not stale


def test_describe_fleet(client, redis, jobs):
    get_queue(redis, "gone-host").enqueue_call("workers.jobs.apply_push", args=({},))
    status = describe_fleet(redis, stale_after=150, recent=2)
    assert status.redis_version.count(".") == 2 and status.redis_used_memory > 0
    assert [h.host for h in status.hosts] == ["host-a", "host-b"]
    assert status.queues == {"podhook-gone-host": 1, "podhook-host-a": 1, "podhook-host-b": 4}
    assert len(status.updates) == 2
    assert [(f.state, f.reference, f.reason) for f in status.failures] == [
        ("rolled_back", f"{REGISTRY}/team/api:2.1", SCRIPT["2.1"][1]),
        ("failed", f"{REGISTRY}/team/web:2.0", REASON_FAILED),
    ]
    assert status.failures[1].job == jobs["failed"] and status.failures[1].host == "host-a"
    data = json.loads(json.dumps(status.to_dict()))
    assert data["redis"]["version"] == status.redis_version
    assert data["hosts"][0]["stale"] is False


def test_list_updates_without_deliveries(redis):
    assert list_updates(redis) == []


def test_logs_carry_no_admin_token(client, redis, jobs, caplog):
    caplog.set_level("DEBUG")
    guess = "guessed-" + ADMIN
    client.get("/v1/jobs", headers={"Authorization": f"Bearer {guess}"})
    login(client, guess)
    login(client)
    client.get("/")
    assert "wrong admin token" in caplog.text
    assert ADMIN not in caplog.text
