"""`podhook jobs`, `jobs show`, `jobs retry`, `jobs cancel` and `hosts` against a real Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from webhook.cli import main, parse_since
from workers.events import make_event
from workers.hosts import register_host
from workers.queueing import JobOptions, get_queue
from workers.routing import dispatch_push

DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def cli(redis_url, monkeypatch):
    monkeypatch.setenv("PODHOOK_REDIS_URL", redis_url)

    def run(*args: str):
        return CliRunner().invoke(main, list(args))

    return run


def queue_push(redis, repository: str, function: str | None = None) -> str:
    """Queue a push as the app does; optionally point the job at a test function."""
    event = make_event("registry.example.com", repository, "1", DIGEST, source="test")
    [queued] = dispatch_push(redis, event, JobOptions(retries=0))
    if function:
        job = get_queue(redis, queued.host).fetch_job(queued.job_id)
        assert job.args  # loads the stored call before it is rewritten
        job.func_name = function  # same job, same meta; a function that needs no Podman
        job.save()
    return queued.job_id


def work(redis, host: str = "web-1") -> None:
    SimpleWorker([get_queue(redis, host)], connection=redis, serializer=JSONSerializer).work(
        burst=True
    )


@pytest.fixture
def seeded(redis):
    register_host(redis, "web-1")
    done = queue_push(redis, "team/api", "tests.app.jobfuncs.finish_updated")
    failed = queue_push(redis, "team/web", "tests.app.jobfuncs.fail_rolled_back")
    work(redis)
    waiting = queue_push(redis, "team/db")
    return {"finished": done, "failed": failed, "queued": waiting}


def test_lists_jobs_with_states_and_outcomes(cli, seeded):
    result = cli("jobs")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert "finished" in lines[seeded["finished"]] and "1 updated" in lines[seeded["finished"]]
    assert "failed" in lines[seeded["failed"]] and "1 rolled_back" in lines[seeded["failed"]]
    assert "queued" in lines[seeded["queued"]]


def test_filters_by_state_image_and_host(cli, seeded):
    as_json = lambda *a: json.loads(cli("jobs", "--json", *a).output)  # noqa: E731
    assert [j["id"] for j in as_json("--state", "failed")] == [seeded["failed"]]
    assert [j["id"] for j in as_json("--image", "team/api")] == [seeded["finished"]]
    assert as_json("--host", "nosuch") == []
    assert len(as_json("--since", "1h")) == 3
    assert as_json("--since", (datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []


def test_show_prints_the_push_and_the_container_rows(cli, seeded):
    result = cli("jobs", "show", seeded["failed"])
    assert result.exit_code == 0, result.output
    assert "registry.example.com/team/web:1" in result.output
    assert "rolled_back" in result.output and "container-web.service" in result.output
    assert "RuntimeError" in result.output  # the failure's last line
    shown = json.loads(cli("jobs", "show", seeded["finished"], "--json").output)
    assert shown["report"]["containers"][0]["state"] == "updated"


def test_show_unknown_job_exits_1(cli, seeded):
    result = cli("jobs", "show", "push-nosuch")
    assert result.exit_code == 1 and "no job 'push-nosuch'" in result.stderr


def test_retry_requeues_a_failed_job_and_refuses_others(cli, seeded, redis):
    result = cli("jobs", "retry", seeded["failed"])
    assert result.exit_code == 0, result.output
    assert "queued again" in result.output
    assert seeded["failed"] in get_queue(redis, "web-1").get_job_ids()
    refused = cli("jobs", "retry", seeded["finished"])
    assert refused.exit_code == 1 and "only failed or cancelled jobs" in refused.stderr
    assert cli("jobs", "retry").exit_code == 2


def test_retry_all_failed(cli, seeded, redis):
    result = cli("jobs", "retry", "--all-failed")
    assert result.exit_code == 0 and "retried 1 failed job(s)" in result.output
    assert get_queue(redis, "web-1").failed_job_registry.get_job_ids() == []


def test_cancel_waiting_job_only(cli, seeded, redis):
    result = cli("jobs", "cancel", seeded["queued"])
    assert result.exit_code == 0 and "canceled" in result.output
    assert seeded["queued"] not in get_queue(redis, "web-1").get_job_ids()
    refused = cli("jobs", "cancel", seeded["finished"])
    assert refused.exit_code == 1 and "only waiting jobs" in refused.stderr


def test_redis_down_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PODHOOK_REDIS_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 1 and "Redis at redis://127.0.0.1:1/0" in result.output


def test_since_accepts_durations_and_iso_times():
    assert datetime.now(UTC) - parse_since("2h") - timedelta(hours=2) < timedelta(seconds=5)
    assert parse_since("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(Exception, match="neither a duration"):
        parse_since("yesterday")


def test_hosts_lists_workers_and_inventory(cli, seeded, redis):
    from workers.inventory import publish_inventory

    publish_inventory(
        redis,
        "web-1",
        {
            "collected_at": 0,
            "containers": [
                {
                    "id": "c1",
                    "name": "web",
                    "unit": "container-web.service",
                    "image": "registry.example.com/team/web:1",
                    "image_id": "f" * 64,
                    "policy": "registry",
                }
            ],
        },
    )
    result = cli("hosts")
    assert result.exit_code == 0, result.output
    assert "web-1" in result.output
    assert "web (container-web.service) runs registry.example.com/team/web:1" in result.output
    [host] = json.loads(cli("hosts", "--json").output)
    assert host["host"] == "web-1" and host["queued"] == 1 and host["failed"] == 1


def test_status_shows_failures_and_exits_1(cli, seeded):
    result = cli("status")
    assert result.exit_code == 1, result.output
    assert "recent failures" in result.output and "rolled_back" in result.output
    assert "registry.example.com/team/web:1" in result.output
    report = json.loads(cli("status", "--json").output)
    assert report["healthy"] is False and report["hosts"][0]["host"] == "web-1"


def test_status_of_a_healthy_fleet_exits_0(cli, redis):
    register_host(redis, "web-1")
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert "recent failures\n  none" in result.output


def test_hosts_forget_stops_queuing_for_a_host(cli, redis):
    register_host(redis, "gone")
    result = cli("hosts", "forget", "gone")
    assert result.exit_code == 0 and "forgot host gone" in result.output
    assert "gone" not in json.dumps(json.loads(cli("hosts", "--json").output))
    again = cli("hosts", "forget", "gone")
    assert again.exit_code == 1 and "not registered" in again.stderr
