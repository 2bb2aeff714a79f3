"""Metrics against a real Redis: real deliveries, then GET /metrics parsed as Prometheus does."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.test_webhook_app import (
    TOKEN,
    blob_push,
    envelope,
    manifest_push,
    post,
)
from tests.conftest import free_port
from webhook.app import create_app
from workers import metrics
from workers.events import make_event
from workers.hosts import register_host
from workers.queueing import get_queue
from workers.report import ContainerReport, JobReport, UpdateState

ROOT = Path(__file__).resolve().parents[2]
ACR_PUSH = (ROOT / "tests/payloads/acr/acr-push.json").read_bytes()
ACR_VALIDATION = json.dumps(
    [
        {
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
        }
    ]
).encode()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def nonzero(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


@pytest.fixture
def app(redis_url):
    app = create_app(redis_url=redis_url, webhook_token=TOKEN, max_body_bytes=4000)
    yield app
    app.extensions["podhook"]["redis"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def row(name: str, state: UpdateState, **timings: float) -> ContainerReport:
    return ContainerReport(
        container_id=f"id-{name}",
        container_name=name,
        unit=f"container-{name}.service",
        image="registry.example.com/app:1",
        policy="registry",
        state=state,
        reason="test",
        timings=timings,
    )


def pushed(
    host: str, rows: list[ContainerReport], *, received_at: float | None, started_at: float
) -> JobReport:
    """The report of a push's job on ``host``: the push arrived at ``received_at``, the job
    started at ``started_at``."""
    event = make_event("registry.example.com", "app", "1", received_at=received_at)
    return JobReport(
        host=host,
        kind="converge",
        reference=event.reference,
        event=event,
        started_at=started_at,
        finished_at=started_at + 10,
        rows=tuple(rows),
    )


def test_every_answer_of_the_webhook_route_is_counted(client, redis, monkeypatch):
    # 503 first, while no worker host is registered.
    assert post(client, envelope(manifest_push())).status_code == 503
    register_host(redis, "host-a", now=1_800_000_000.0)
    assert post(client, envelope(manifest_push(), blob_push())).status_code == 202
    # The same push again joins the job that waits: accepted, no new job.
    assert post(client, envelope(manifest_push())).status_code == 202
    assert post(client, envelope(blob_push(), blob_push())).status_code == 200  # ignored
    assert post(client, envelope(manifest_push()), token="wrong").status_code == 401
    assert post(client, envelope(manifest_push()), token=None).status_code == 401
    assert post(client, b"not json{").status_code == 400
    assert post(client, b" " * 5000 + envelope(manifest_push())).status_code == 413
    assert post(client, envelope(manifest_push()), path="/v1/webhooks/nosuch").status_code == 404
    acr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert client.post("/v1/webhooks/acr", data=ACR_PUSH, headers=acr).status_code == 202
    again = client.post("/v1/webhooks/acr", data=ACR_PUSH, headers=acr)
    assert again.status_code == 200 and again.json["duplicate"] is True  # same delivery id
    assert client.post("/v1/webhooks/acr", data=ACR_VALIDATION, headers=acr).status_code == 200

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("webhook.routes.dispatch_pushes", broken)
    other = manifest_push(digest="sha256:" + "d" * 64)
    assert post(client, envelope(other)).status_code == 500

    samples = scrape(client)
    assert nonzero(samples, "podhook_deliveries_total") == {
        (("outcome", "queued"), ("source", "distribution")): 2,
        (("outcome", "ignored"), ("source", "distribution")): 1,
        (("outcome", "refused_auth"), ("source", "distribution")): 2,
        (("outcome", "bad_payload"), ("source", "distribution")): 1,
        (("outcome", "too_large"), ("source", "distribution")): 1,
        (("outcome", "unavailable"), ("source", "distribution")): 1,
        (("outcome", "error"), ("source", "distribution")): 1,
        (("outcome", "unknown_endpoint"), ("source", "unknown")): 1,
        (("outcome", "queued"), ("source", "acr")): 1,
        (("outcome", "duplicate"), ("source", "acr")): 1,
        (("outcome", "handshake"), ("source", "acr")): 1,
    }
    # Every outcome of a source that has had deliveries is there, at zero if need be.
    assert value(samples, "podhook_deliveries_total", source="acr", outcome="bad_payload") == 0
    assert nonzero(samples, "podhook_events_queued_total") == {
        (("source", "distribution"),): 2,
        (("source", "acr"),): 1,
    }
    assert nonzero(samples, "podhook_events_ignored_total") == {(("source", "distribution"),): 3}
    assert nonzero(samples, "podhook_jobs_queued_total") == {(("host", "host-a"),): 2}
    assert value(samples, "podhook_queue_depth", host="host-a") == 2
    assert (
        value(samples, "podhook_worker_last_heartbeat_timestamp_seconds", host="host-a")
        == 1_800_000_000.0
    )
    assert value(samples, "podhook_redis_up") == 1
    # A registered host has every state and an empty histogram before its first job.
    for state in UpdateState:
        assert value(samples, "podhook_updates_total", host="host-a", state=state.value) == 0
    assert value(samples, "podhook_push_to_running_seconds_count", host="host-a") == 0


def test_queue_depth_is_read_live(client, redis):
    register_host(redis, "host-a")
    register_host(redis, "host-b")
    post(client, envelope(manifest_push()))
    samples = scrape(client)
    assert value(samples, "podhook_queue_depth", host="host-a") == 1
    assert value(samples, "podhook_queue_depth", host="host-b") == 1
    get_queue(redis, "host-b").empty()
    samples = scrape(client)
    assert value(samples, "podhook_queue_depth", host="host-a") == 1
    assert value(samples, "podhook_queue_depth", host="host-b") == 0


def test_outcomes_by_state_and_push_to_running_latency(client, redis):
    received = 1_800_000_000.0
    started = received + 1.0  # the job started a second after the webhook arrived
    rows = [
        row("fast", UpdateState.UPDATED, pulled=0.1, active=-0.8, finished=0.2),  # 0.2 s
        row("web", UpdateState.UPDATED, pulled=1.0, active=2.0, finished=2.0),  # 3 s
        row("slow", UpdateState.UPDATED, active=400.0),  # 401 s: only +Inf
        row("api", UpdateState.ROLLED_BACK, pulled=1.0, finished=9.0),
        row("db", UpdateState.UNCHANGED, finished=0.1),
    ]
    assert metrics.record_outcomes(
        redis, pushed("host-a", rows, received_at=received, started_at=started)
    )
    # A push whose event has no arrival time (queued by an older app) is counted, not timed.
    metrics.record_outcomes(
        redis,
        pushed(
            "host-a", [row("old", UpdateState.UPDATED, active=1.0)], received_at=None, started_at=1
        ),
    )
    # A worker whose clock is behind the web host's: counted as no delay rather than negative.
    metrics.record_outcomes(
        redis,
        pushed(
            "host-b",
            [row("skewed", UpdateState.UPDATED, active=1.0)],
            received_at=received,
            started_at=received - 5.0,
        ),
    )

    samples = scrape(client)
    assert nonzero(samples, "podhook_updates_total") == {
        (("host", "host-a"), ("state", "updated")): 4,
        (("host", "host-a"), ("state", "rolled_back")): 1,
        (("host", "host-a"), ("state", "unchanged")): 1,
        (("host", "host-b"), ("state", "updated")): 1,
    }
    buckets = {
        le: value(samples, "podhook_push_to_running_seconds_bucket", host="host-a", le=le)
        for le in ("0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "+Inf")
    }
    assert buckets == {
        "0.5": 1,
        "1.0": 1,
        "2.0": 1,
        "5.0": 2,
        "10.0": 2,
        "30.0": 2,
        "60.0": 2,
        "120.0": 2,
        "300.0": 2,
        "+Inf": 3,
    }
    assert value(samples, "podhook_push_to_running_seconds_count", host="host-a") == 3
    assert value(samples, "podhook_push_to_running_seconds_sum", host="host-a") == pytest.approx(
        0.2 + 3.0 + 401.0
    )
    assert value(samples, "podhook_push_to_running_seconds_bucket", host="host-b", le="0.5") == 1
    assert value(samples, "podhook_push_to_running_seconds_sum", host="host-b") == 0


def test_notifications_are_counted(client, redis):
    metrics.record_notification(redis, "host-a", True)
    metrics.record_notification(redis, "host-a", True)
    metrics.record_notification(redis, "host-a", False)
    samples = scrape(client)
    assert value(samples, "podhook_notifications_total", host="host-a", result="sent") == 2
    assert value(samples, "podhook_notifications_total", host="host-a", result="failed") == 1


def test_openmetrics_is_served_when_asked(client, redis):
    post(client, envelope(manifest_push()))
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.mimetype == "application/openmetrics-text"
    assert response.text.rstrip().endswith("# EOF")


def test_redis_hiccups_neither_fail_a_delivery_nor_pass_silently(caplog):
    app = create_app(redis_url=f"redis://127.0.0.1:{free_port()}/0", webhook_token=TOKEN)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="podhook.metrics"):
        assert post(client, envelope(manifest_push())).status_code == 503
        assert post(client, b"not json{").status_code == 400
        response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert [s.value for s in families["podhook_redis_up"].samples] == [0]
    assert set(families) == {"podhook_redis_up"}
    warnings = [r.getMessage() for r in caplog.records if r.name == "podhook.metrics"]
    assert any("cannot record a delivery (unavailable)" in w for w in warnings), warnings
    assert any("cannot record a delivery (bad_payload)" in w for w in warnings), warnings
    assert any("cannot read Redis" in w for w in warnings), warnings


def test_unknown_outcome_is_a_programming_error(redis):
    with pytest.raises(ValueError, match="unknown delivery outcome 'queue'"):
        metrics.record_delivery(redis, "distribution", "queue")


# Each child is a separate web process (its own create_app, as one gunicorn worker is) or a
# worker on another host; all of them count into the same Redis.
WEB_PROCESS = textwrap.dedent(
    """
    import json, sys
    from webhook.app import create_app
    from tests.app.test_webhook_app import TOKEN, envelope, manifest_push, post

    redis_url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = create_app(redis_url=redis_url, webhook_token=TOKEN)
    client = app.test_client()
    for n in range(count):
        digest = "sha256:" + f"{tag}{n:08x}".rjust(64, "0")
        assert post(client, envelope(manifest_push(digest=digest))).status_code == 202
        assert post(client, b"[1, 2]").status_code == 400
    """
)
WORKER_PROCESS = textwrap.dedent(
    """
    import sys
    from redis import Redis
    from workers import metrics
    from workers.events import make_event
    from workers.report import ContainerReport, JobReport, UpdateState

    redis = Redis.from_url(sys.argv[1])
    host, count = sys.argv[2], int(sys.argv[3])
    event = make_event("r.example.com", "app", "1", received_at=100.0)
    for n in range(count):
        row = ContainerReport(
            "id", "web", "web.service", "r.example.com/app:1", "registry",
            UpdateState.UPDATED, "restarted", timings={"active": 1.5},
        )
        report = JobReport(
            host, "converge", event.reference, event=event, started_at=100.0, rows=(row,)
        )
        assert metrics.record_outcomes(redis, report)
    """
)


def test_counts_from_several_processes_and_hosts_add_up(client, redis, redis_url):
    register_host(redis, "host-a")
    per_process = 15
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WEB_PROCESS, redis_url, tag, str(per_process)], cwd=ROOT
        )
        for tag in ("a", "b")
    ] + [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_PROCESS, redis_url, host, str(per_process)], cwd=ROOT
        )
        for host in ("remote-1", "remote-2")
    ]
    deadline = time.monotonic() + 60
    for child in children:
        assert child.wait(timeout=max(1.0, deadline - time.monotonic())) == 0

    samples = scrape(client)
    total = 2 * per_process
    assert value(samples, "podhook_deliveries_total", source="distribution", outcome="queued") == (
        total
    )
    assert value(
        samples, "podhook_deliveries_total", source="distribution", outcome="bad_payload"
    ) == (total)
    assert value(samples, "podhook_events_queued_total", source="distribution") == total
    # One reference pushed 30 times: one job per (host, reference), which every push joins.
    assert value(samples, "podhook_jobs_queued_total", host="host-a") == 1
    assert value(samples, "podhook_queue_depth", host="host-a") == 1
    for host in ("remote-1", "remote-2"):
        assert value(samples, "podhook_updates_total", host=host, state="updated") == per_process
        assert (
            value(samples, "podhook_push_to_running_seconds_bucket", host=host, le="2.0")
            == per_process
        )
        assert value(samples, "podhook_push_to_running_seconds_sum", host=host) == pytest.approx(
            1.5 * per_process
        )


def test_the_metrics_route_needs_no_token_and_answers_get_only(client):
    assert client.get("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405
