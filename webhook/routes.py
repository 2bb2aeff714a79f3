"""HTTP routes: the one webhook route every source shares, and the health checks."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from flask import Blueprint, current_app, jsonify, request
from redis.exceptions import RedisError

from webhook.auth import AuthError
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import UNKNOWN_REGISTRY, PayloadError, get_source
from workers import audit, metrics
from workers.events import EventError, PushEvent, make_event
from workers.queueing import JobOptions, NoHostsError, is_delivery_seen, remember_delivery
from workers.routing import dispatch_push
from workers.settings import Settings

log = logging.getLogger("podhook.webhook")
blueprint = Blueprint("podhook", __name__)


def _state() -> dict[str, Any]:
    return current_app.extensions["podhook"]  # type: ignore[no-any-return]


def _refuse(status: int, reason: str, **fields: Any) -> Any:
    return jsonify(error=reason, status=status, **fields), status


def _retarget(event: PushEvent, endpoint: Endpoint, settings: Settings) -> PushEvent:
    """Apply the endpoint's registry and the alias map to an event's registry host."""
    registry = endpoint.registry or event.registry
    registry = settings.registry_aliases.get(registry, registry)
    if registry == UNKNOWN_REGISTRY:
        raise EventError(f"endpoint {endpoint.name!r} must configure the registry host")
    if registry == event.registry:
        return event
    return make_event(
        registry,
        event.repository,
        event.tag,
        event.digest,
        source=event.source,
        delivery=event.delivery,
        received_at=event.received_at,
    )


@blueprint.post("/v1/webhooks/<name>", provide_automatic_options=False)
@blueprint.post("/v1/webhooks/<name>/<path:secret>", provide_automatic_options=False)
def receive(name: str, secret: str | None = None) -> Any:
    """Authenticate, parse and queue one delivery; answer 2xx only once its jobs are queued.

    Every answer is counted in the delivery metrics (workers/metrics.py) by source and outcome.
    """
    state = _state()
    settings: Settings = state["settings"]
    redis = state["redis"]
    endpoint: Endpoint | None = state["endpoints"].get(name)
    if endpoint is None:
        metrics.record_delivery(redis, metrics.UNKNOWN_SOURCE, "unknown_endpoint")
        return _refuse(404, f"no webhook endpoint named {name!r}")
    source = get_source(endpoint.source)
    assert source is not None
    fields: dict[str, Any] = {"source": endpoint.source, "endpoint": name}
    received_at = time.time()
    body = request.get_data(cache=False)
    # werkzeug's Headers is a case-insensitive mapping in all but name.
    headers = cast(Mapping[str, str], request.headers)
    delivery = Delivery(headers=headers, body=body, query=request.args, path_secret=secret)
    try:
        source.authenticate(delivery, endpoint)
    except AuthError as error:
        metrics.record_delivery(redis, endpoint.source, "refused_auth")
        log.warning(
            "refused delivery to endpoint=%s: %s", name, error, extra={**fields, "status": 401}
        )
        return _refuse(401, str(error))
    try:
        parsed = source.parse(headers, body)
        events = [
            _retarget(replace(event, received_at=received_at), endpoint, settings)
            for event in parsed.events
        ]
    except (PayloadError, EventError) as error:
        metrics.record_delivery(redis, endpoint.source, "bad_payload")
        log.warning("bad delivery to endpoint=%s: %s", name, error, extra={**fields, "status": 400})
        return _refuse(400, f"{endpoint.source} payload: {error}")
    except Exception:
        # An adapter tripped over a body it did not expect (deeply nested JSON, a list where a
        # string belongs). It is the body that is wrong: a 500 would make senders retry it
        # forever. The traceback is logged for the adapter to be fixed.
        metrics.record_delivery(redis, endpoint.source, "bad_payload")
        log.exception("%s adapter could not read a delivery to endpoint=%s", endpoint.source, name)
        return _refuse(400, f"{endpoint.source} payload: not a body this source sends")
    fields["delivery"] = parsed.delivery
    if parsed.reply is not None:
        metrics.record_delivery(redis, endpoint.source, "handshake")
        log.info("answered a validation request to endpoint=%s", name, extra=fields)
        return jsonify(parsed.reply), 200

    summary: dict[str, Any] = {"events": len(events), "ignored": parsed.ignored}
    try:
        if parsed.delivery and is_delivery_seen(redis, name, parsed.delivery):
            metrics.record_delivery(redis, endpoint.source, "duplicate")
            log.info(
                "delivery to endpoint=%s seen before; nothing queued",
                name,
                extra={**fields, "outcome": "duplicate"},
            )
            return jsonify({**summary, "queued": [], "duplicate": True}), 200
        queued, duplicates, jobs = [], 0, []
        per_host = Counter[str]()
        options = JobOptions.from_settings(settings)
        for event in events:
            for job in dispatch_push(
                redis,
                event,
                options,
                stale_after=settings.host_stale_after,
                inventory_max_age=settings.inventory_max_age,
            ):
                jobs.append(
                    {
                        "host": job.host,
                        "job": job.job_id,
                        "duplicate": job.duplicate,
                        "reference": event.reference,
                        "digest": event.digest,
                    }
                )
                # A hint that joins the job already waiting for (host, reference) is as good as
                # a new one: that job reads the desired state this push just recorded.
                if job.job_id not in queued:
                    queued.append(job.job_id)
                if job.duplicate:
                    duplicates += 1
                else:
                    per_host[job.host] += 1
        if parsed.delivery:
            remember_delivery(redis, name, parsed.delivery)
        if events:
            audit.record(
                redis,
                "delivery",
                {
                    "endpoint": name,
                    "source": endpoint.source,
                    "delivery": parsed.delivery,
                    "received_at": received_at,
                    "queued_at": time.time(),
                    "ignored": parsed.ignored,
                    "jobs": jobs,
                },
                settings.audit_retention,
            )
    except NoHostsError as error:
        metrics.record_delivery(redis, endpoint.source, "unavailable")
        log.warning(
            "cannot queue delivery to endpoint=%s: %s", name, error, extra={**fields, "status": 503}
        )
        return _refuse(503, str(error))
    except RedisError as error:
        metrics.record_delivery(redis, endpoint.source, "unavailable")
        log.error(
            "cannot queue delivery to endpoint=%s: Redis: %s",
            name,
            error,
            extra={**fields, "status": 503},
        )
        return _refuse(503, "job queue unavailable; retry later")
    outcome = "queued" if events else "ignored"
    metrics.record_delivery(
        redis,
        endpoint.source,
        outcome,
        events=len(events),
        ignored=parsed.ignored,
        jobs=per_host,
    )
    log.info(
        "delivery endpoint=%s: events=%d ignored=%d queued=%d duplicates=%d",
        name,
        len(events),
        parsed.ignored,
        len(queued),
        duplicates,
        extra={
            **fields,
            "outcome": outcome,
            "events": len(events),
            "ignored": parsed.ignored,
            "queued": len(queued),
            "duplicates": duplicates,
            # One push of one image: its reference and digest are the line's image and digest.
            **(
                {"image": events[0].reference, "digest": events[0].digest}
                if len(events) == 1
                else {}
            ),
        },
    )
    return jsonify({**summary, "queued": queued, "duplicates": duplicates}), (
        202 if events else 200
    )


@blueprint.route("/v1/webhooks/<name>", methods=["OPTIONS"])
@blueprint.route("/v1/webhooks/<name>/<path:secret>", methods=["OPTIONS"])
def abuse_protection(name: str, secret: str | None = None) -> Any:
    """Answer the CloudEvents webhook validation handshake (Azure Event Grid sends it).

    The sender asks with ``WebHook-Request-Origin``; echoing it in ``WebHook-Allowed-Origin``
    allows its deliveries (CloudEvents 1.0 HTTP webhook spec, section 4).
    """
    if name not in _state()["endpoints"]:
        return _refuse(404, f"no webhook endpoint named {name!r}")
    response = current_app.response_class(status=200)
    origin = request.headers.get("WebHook-Request-Origin")
    if origin:
        response.headers["WebHook-Allowed-Origin"] = origin
        response.headers["Allow"] = "POST, OPTIONS"
    return response


@blueprint.get("/healthz")
def healthz() -> Any:
    """Liveness: the process answers."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> Any:
    """Readiness: Redis answers, so deliveries can be queued."""
    try:
        _state()["redis"].ping()
    except RedisError as error:
        return _refuse(503, f"Redis unreachable: {error}")
    return jsonify(status="ready")
