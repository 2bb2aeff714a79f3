"""Prometheus metrics kept in Redis, so every web process and every worker host adds to one count.

Why Redis and not prometheus_client's multiprocess mode: the figures come from gunicorn's
worker processes *and* from RQ work horses on other hosts, each forked for one job and gone
after it. Multiprocess mode only merges processes that share one directory on one machine, so
the workers' figures would need an exporter per host and their counts would vanish with their
directories. Every one of those processes already talks to the one Redis, so each recording is
an ``HINCRBY`` there (one round trip, in a pipeline) and ``GET /metrics`` renders the hashes at
scrape time through a custom collector. Counts survive restarts of the app for as long as Redis
keeps its data; queue depth and heartbeats are read live.

Layout: one hash per metric, ``podhook:metrics:<name>``, whose fields are the JSON list of the
label values. A histogram stores per-bucket counts under ``[labels..., "le", bound]`` (each
observation increments the smallest bucket that holds it; the collector adds them up) and the
sum under ``[labels..., "sum"]``, both in one MULTI so the two never disagree.

Recording never raises for Redis: a failure is logged at warning and that increment is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from workers.hosts import get_hosts
from workers.queueing import get_queue
from workers.report import JobReport, UpdateState

log = logging.getLogger("podhook.metrics")

KEY = "podhook:metrics:{name}"

DELIVERIES = "deliveries"
EVENTS_QUEUED = "events_queued"
EVENTS_IGNORED = "events_ignored"
JOBS_QUEUED = "jobs_queued"
UPDATES = "updates"
NOTIFICATIONS = "notifications"
PUSH_TO_RUNNING = "push_to_running_seconds"

# What a delivery to POST /v1/webhooks/<endpoint> came to; one per answer the route can give.
DELIVERY_OUTCOMES = (
    "queued",  # 202: its pushes recorded as desired state, the hosts concerned asked to converge
    "duplicate",  # 200: a delivery id seen before
    "ignored",  # 200: no push events in it (blobs, pulls, tests, deletes)
    "handshake",  # 200: a sender's validation request, answered
    "refused_auth",  # 401
    "bad_payload",  # 400
    "unknown_endpoint",  # 404
    "too_large",  # 413
    "unavailable",  # 503: Redis down or no worker host registered
    "error",  # 500
)
# Seconds from the webhook's arrival to the unit active again on the new image.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNKNOWN_SOURCE = "unknown"


def _key(name: str) -> str:
    return KEY.format(name=name)


def _field(*labels: str) -> str:
    return json.dumps(list(labels), separators=(",", ":"))


def _bucket(seconds: float) -> str:
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


def _add(pipe: Any, commands: Iterable[tuple[str, str, str, float]]) -> None:
    for op, name, field, amount in commands:
        if op == "float":
            pipe.hincrbyfloat(_key(name), field, amount)
        else:
            pipe.hincrby(_key(name), field, int(amount))


def _write(redis: Redis, what: str, commands: Iterable[tuple[str, str, str, float]]) -> bool:
    """Run ``(op, name, field, amount)`` increments in one MULTI; False (logged) on Redis errors."""
    try:
        pipe = redis.pipeline(transaction=True)
        _add(pipe, commands)
        pipe.execute()
    except RedisError as error:
        log.warning("metrics: cannot record %s in Redis: %s", what, error)
        return False
    return True


def _delivery_commands(
    source: str,
    outcome: str,
    events: int,
    ignored: int,
    jobs: Mapping[str, int] | None,
) -> list[tuple[str, str, str, float]]:
    if outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"unknown delivery outcome {outcome!r}")
    commands: list[tuple[str, str, str, float]] = [("int", DELIVERIES, _field(source, outcome), 1)]
    if events:
        commands.append(("int", EVENTS_QUEUED, _field(source), events))
    if ignored:
        commands.append(("int", EVENTS_IGNORED, _field(source), ignored))
    commands += [("int", JOBS_QUEUED, _field(host), n) for host, n in (jobs or {}).items() if n]
    return commands


def record_delivery(
    redis: Redis,
    source: str,
    outcome: str,
    *,
    events: int = 0,
    ignored: int = 0,
    jobs: Mapping[str, int] | None = None,
) -> bool:
    """Count one delivery of ``source`` that came to ``outcome`` (one of DELIVERY_OUTCOMES).

    ``events`` push events were queued, ``ignored`` events were not pushes, and ``jobs`` maps
    each host to its newly queued jobs. Returns whether it was recorded; never raises for Redis
    (the failure is logged at warning). Raises ValueError for an unknown outcome.
    """
    commands = _delivery_commands(source, outcome, events, ignored, jobs)
    return _write(redis, f"a delivery ({outcome})", commands)


def add_delivery(
    pipe: Any,
    source: str,
    outcome: str,
    *,
    events: int = 0,
    ignored: int = 0,
    jobs: Mapping[str, int] | None = None,
) -> None:
    """Queue on pipeline ``pipe`` the counts ``record_delivery`` makes, for a delivery whose
    other writes go in the same round trip; the pipeline's caller handles Redis errors.
    Raises ValueError for an unknown outcome.
    """
    _add(pipe, _delivery_commands(source, outcome, events, ignored, jobs))


def record_outcomes(redis: Redis, report: JobReport) -> bool:
    """Count each row of ``report`` by its host and state, and observe push-to-running for
    ``updated`` rows.

    The latency is from the push's ``received_at`` (the webhook's arrival, Unix time, on the
    web host's clock) to the report's ``started_at`` (the job's start, Unix time) plus the
    row's ``active`` timing; rows without that timing, and reports without both times (a
    reconcile, a push queued by an older app), are not observed. Clock skew between hosts
    could make it negative: it is counted as 0. Returns whether it was recorded; never raises
    for Redis (the failure is logged at warning).
    """
    host = report.host
    received_at = report.event.received_at if report.event is not None else None
    started_at = report.started_at
    commands: list[tuple[str, str, str, float]] = []
    for row in report.rows:
        commands.append(("int", UPDATES, _field(host, row.state.value), 1))
        active = row.timings.get("active")
        if (
            row.state is UpdateState.UPDATED
            and received_at is not None
            and started_at is not None
            and active is not None
        ):
            seconds = max(0.0, started_at + active - received_at)
            commands.append(("int", PUSH_TO_RUNNING, _field(host, "le", _bucket(seconds)), 1))
            commands.append(("float", PUSH_TO_RUNNING, _field(host, "sum"), seconds))
    if not commands:
        return True
    return _write(redis, f"the outcomes of host {host}", commands)


def record_notification(redis: Redis, host: str, sent: bool) -> bool:
    """Count one notification attempt of ``host``, ``sent`` or not. Never raises for Redis."""
    result = "sent" if sent else "failed"
    return _write(redis, "a notification", [("int", NOTIFICATIONS, _field(host, result), 1)])


class RedisCollector(Collector):
    """A prometheus_client collector rendering podhook's metrics from Redis at each scrape.

    When Redis cannot be read, ``podhook_redis_up`` is 0 and nothing else is rendered, so a
    scrape still succeeds and the outage is visible.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are only known after reading Redis."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield every family; reads Redis and never raises for it (logged at warning)."""
        up = GaugeMetricFamily("podhook_redis_up", "Whether /metrics could read Redis (1 or 0).")
        try:
            families = self._read()
        except RedisError as error:
            log.warning("metrics: cannot read Redis: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        names = (DELIVERIES, EVENTS_QUEUED, EVENTS_IGNORED, JOBS_QUEUED, UPDATES, NOTIFICATIONS)
        pipe = self.redis.pipeline(transaction=False)
        for name in (*names, PUSH_TO_RUNNING):
            pipe.hgetall(_key(name))
        *counts, latency = (_decode(raw) for raw in pipe.execute())
        hosts = get_hosts(self.redis)
        pipe = self.redis.pipeline(transaction=False)
        for host in sorted(hosts):
            pipe.llen(get_queue(self.redis, host).key)
        depths = dict(zip(sorted(hosts), pipe.execute(), strict=True))
        by_name = dict(zip(names, counts, strict=True))

        deliveries = by_name[DELIVERIES]
        # Zeros for the outcomes a source has not had yet, so increase() sees the first one.
        for (source,) in {labels[:1] for labels in deliveries}:
            for outcome in DELIVERY_OUTCOMES:
                deliveries.setdefault((source, outcome), 0)
        updates = by_name[UPDATES]
        for host in hosts:
            for state in UpdateState:
                updates.setdefault((host, state.value), 0)

        return [
            _counter(
                "podhook_deliveries",
                "Webhook deliveries by source and what came of them.",
                ["source", "outcome"],
                deliveries,
            ),
            _counter(
                "podhook_events_queued",
                "Push events of accepted deliveries that queued at least one new job.",
                ["source"],
                by_name[EVENTS_QUEUED],
            ),
            _counter(
                "podhook_events_ignored",
                "Events of accepted deliveries that were not image pushes.",
                ["source"],
                by_name[EVENTS_IGNORED],
            ),
            _counter(
                "podhook_jobs_queued",
                "Jobs queued for each host.",
                ["host"],
                by_name[JOBS_QUEUED],
            ),
            _counter(
                "podhook_updates",
                "Container report rows by host and state, one per container per job attempt.",
                ["host", "state"],
                updates,
            ),
            _counter(
                "podhook_notifications",
                "Notifications of job outcomes, sent or failed.",
                ["host", "result"],
                by_name[NOTIFICATIONS],
            ),
            _histogram(latency, hosts),
            _gauge(
                "podhook_queue_depth",
                "Jobs waiting in each registered host's queue, read at scrape time.",
                ["host"],
                {(host,): depth for host, depth in depths.items()},
            ),
            _gauge(
                "podhook_worker_last_heartbeat_timestamp_seconds",
                "Unix time of the last heartbeat of each registered host's workers.",
                ["host"],
                {(host,): beat for host, beat in hosts.items()},
            ),
        ]


def _decode(raw: Mapping[bytes, bytes]) -> dict[tuple[str, ...], float]:
    values: dict[tuple[str, ...], float] = {}
    for field, value in raw.items():
        try:
            labels = json.loads(field)
            if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
                raise ValueError("not a list of strings")
            values[tuple(labels)] = float(value)
        except ValueError as error:
            log.warning("metrics: skipping unreadable field %r: %s", field, error)
    return values


def _counter(
    name: str, documentation: str, labels: list[str], values: Mapping[tuple[str, ...], float]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        if len(label_values) == len(labels):
            family.add_metric(list(label_values), value)
    return family


def _gauge(
    name: str, documentation: str, labels: list[str], values: Mapping[tuple[str, ...], float]
) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def _histogram(stored: Mapping[tuple[str, ...], float], hosts: Iterable[str]) -> Metric:
    family = HistogramMetricFamily(
        "podhook_push_to_running_seconds",
        "Seconds from a webhook's arrival to the unit active again on the new image.",
        labels=["host"],
    )
    # A registered host gets empty buckets too, so its first observation is seen by rate().
    per_host: dict[str, dict[str, float]] = {host: {} for host in hosts}
    for labels, value in stored.items():
        if len(labels) == 3 and labels[1] == "le":
            per_host.setdefault(labels[0], {})[labels[2]] = value
        elif len(labels) == 2 and labels[1] == "sum":
            per_host.setdefault(labels[0], {})["sum"] = value
    for host, values in sorted(per_host.items()):
        cumulative, buckets = 0.0, []
        for bound in (*(repr(b) for b in LATENCY_BUCKETS), "+Inf"):
            cumulative += values.get(bound, 0.0)
            buckets.append((bound, cumulative))
        family.add_metric([host], buckets, sum_value=values.get("sum", 0.0))
    return family
