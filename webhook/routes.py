"""HTTP routes: the one webhook route every source shares, and the health checks."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from flask import Blueprint, current_app, jsonify, request
from gunicorn.http.errors import ParseException
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge

from webhook.auth import AuthError
from webhook.endpoints import Delivery, Endpoint
from webhook.serving import BODY_SECONDS, RequestTimeoutError, start_body_deadline
from webhook.sources import UNKNOWN_REGISTRY, PayloadError, clean_delivery_id, get_source
from workers import audit, metrics
from workers.events import EventError, PushEvent, make_event
from workers.queueing import JobOptions, NoHostsError, delivery_key, remember_delivery
from workers.redis_connection import confirm_replicated
from workers.routing import dispatch_pushes
from workers.settings import Settings

log = logging.getLogger("podhook.webhook")
blueprint = Blueprint("podhook", __name__)


def _state() -> dict[str, Any]:
    return current_app.extensions["podhook"]  # type: ignore[no-any-return]


def _refuse(status: int, reason: str, **fields: Any) -> Any:
    return jsonify(error=reason, status=status, **fields), status


def _count(source: str, outcome: str, **counts: Any) -> None:
    """Count this delivery, whose answer is decided, in the metrics; best effort.

    Through the app's metrics client, whose timeouts are a fraction of a second: a Redis that
    hangs delays no answer by more than that, and a count that fails is logged and lost.
    """
    metrics.record_delivery(_state()["metrics_redis"], source, outcome, **counts)


class BodyError(Exception):
    """A request body that could not be read: ``status`` (400 or 408) and a reason to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _read_body(limit: int) -> bytes:
    """The request body, read within its deadline (``webhook/serving.py``).

    Raises RequestEntityTooLarge past ``limit`` bytes, and BodyError for a body that came too
    slowly (408), ended early or was framed wrongly (a bad chunk size, a forbidden trailer: 400).
    """
    start_body_deadline(request.environ)
    parts, size = [], 0
    try:
        stream = request.stream
        while chunk := stream.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge()
            parts.append(chunk)
    except RequestEntityTooLarge:
        raise
    except Exception as error:
        raise _body_error(error) from None
    # gunicorn ends a body whose client stopped early without a word: its length tells.
    if request.content_length is not None and size < request.content_length:
        raise BodyError(400, "the body ended before it was complete")
    return b"".join(parts)


def _body_error(error: BaseException) -> BodyError:
    # werkzeug reports a failed read of the body as ClientDisconnected, raised while handling
    # the server's own error: the cause is found down the chain.
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, RequestTimeoutError) for e in chain):
        return BodyError(408, f"the body did not arrive within {BODY_SECONDS:g} s")
    for e in chain:
        if isinstance(e, ParseException):
            # The class names the fault (InvalidChunkSize, InvalidHeader); its message would
            # quote the sender's bytes.
            return BodyError(400, f"malformed request body: {type(e).__name__}")
    return BodyError(400, "the body ended before it was complete")


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
        _count(metrics.UNKNOWN_SOURCE, "unknown_endpoint")
        return _refuse(404, f"no webhook endpoint named {name!r}")
    source = get_source(endpoint.source)
    assert source is not None
    fields: dict[str, Any] = {"source": endpoint.source, "endpoint": name}
    received_at = time.time()
    try:
        body = _read_body(settings.max_body_bytes)
    except BodyError as error:
        _count(endpoint.source, "bad_payload")
        log.warning(
            "unreadable delivery to endpoint=%s: %s",
            name,
            error,
            extra={**fields, "status": error.status},
        )
        return _refuse(error.status, str(error))
    # werkzeug's Headers is a case-insensitive mapping in all but name.
    headers = cast(Mapping[str, str], request.headers)
    delivery = Delivery(headers=headers, body=body, query=request.args, path_secret=secret)
    try:
        source.authenticate(delivery, endpoint)
    except AuthError as error:
        _count(endpoint.source, "refused_auth")
        log.warning(
            "refused delivery to endpoint=%s: %s", name, error, extra={**fields, "status": 401}
        )
        return _refuse(401, str(error))
    try:
        parsed = source.parse(headers, body)
        events = [
            _retarget(
                replace(event, delivery=clean_delivery_id(event.delivery), received_at=received_at),
                endpoint,
                settings,
            )
            for event in parsed.events
        ]
    except (PayloadError, EventError) as error:
        _count(endpoint.source, "bad_payload")
        log.warning("bad delivery to endpoint=%s: %s", name, error, extra={**fields, "status": 400})
        return _refuse(400, f"{endpoint.source} payload: {error}")
    except Exception:
        # An adapter tripped over a body it did not expect (deeply nested JSON, a list where a
        # string belongs). It is the body that is wrong: a 500 would make senders retry it
        # forever. The traceback is logged for the adapter to be fixed.
        _count(endpoint.source, "bad_payload")
        log.exception("%s adapter could not read a delivery to endpoint=%s", endpoint.source, name)
        return _refuse(400, f"{endpoint.source} payload: not a body this source sends")
    # The delivery id becomes a Redis key and a log field: one that is not short printable text
    # (a lone surrogate, control characters) is no id at all, and the push still counts.
    delivery_id = clean_delivery_id(parsed.delivery)
    if parsed.delivery is not None and delivery_id is None:
        log.warning(
            "ignored the unusable delivery id of a delivery to endpoint=%s", name, extra=fields
        )
    parsed = replace(parsed, delivery=delivery_id)
    fields["delivery"] = parsed.delivery
    if len(events) > settings.max_delivery_events:
        # Refused whole before anything is queued (the 413 is counted as too_large by
        # webhook/metrics.py): queuing them all would outlast the sender's timeout.
        log.warning(
            "refused delivery to endpoint=%s: %d push events, at most %d",
            name,
            len(events),
            settings.max_delivery_events,
            extra={**fields, "status": 413},
        )
        return _refuse(
            413,
            f"the delivery holds {len(events)} push events; at most "
            f"{settings.max_delivery_events} are accepted in one (PODHOOK_MAX_DELIVERY_EVENTS)",
            events=len(events),
            limit=settings.max_delivery_events,
        )
    if parsed.reply is not None:
        _count(endpoint.source, "handshake")
        log.info("answered a validation request to endpoint=%s", name, extra=fields)
        return jsonify(parsed.reply), 200

    summary: dict[str, Any] = {"events": len(events), "ignored": parsed.ignored}
    outcome = "queued" if events else "ignored"
    try:
        # One script dedups, routes, records the desired states and decides; a second queues
        # the new jobs (workers/routing.py).
        dispatch = dispatch_pushes(
            redis,
            events,
            JobOptions.from_settings(settings),
            seen_key=delivery_key(name, parsed.delivery) if parsed.delivery else None,
            stale_after=settings.host_stale_after,
            inventory_max_age=settings.inventory_max_age,
        )
        if dispatch.duplicate:
            _count(endpoint.source, "duplicate")
            log.info(
                "delivery to endpoint=%s seen before; nothing queued",
                name,
                extra={**fields, "outcome": "duplicate"},
            )
            return jsonify({**summary, "queued": [], "duplicate": True}), 200
        # A dict keeps the order of first appearance and finds a job id at once.
        queued: dict[str, None] = {}
        duplicates, jobs = 0, []
        per_host = Counter[str]()
        for event, event_jobs in zip(events, dispatch.jobs, strict=True):
            for job in event_jobs:
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
                queued.setdefault(job.job_id)
                if job.duplicate:
                    duplicates += 1
                else:
                    per_host[job.host] += 1
        # On a replica before 2xx, and before the delivery id is remembered (docs/ha.md).
        confirm_replicated(redis, settings)
        # The delivery id, the audit entry and the delivery's counts: one round trip, all or
        # nothing, so a delivery answered 503 here is not counted as queued.
        pipe = redis.pipeline(transaction=True)
        if parsed.delivery:
            remember_delivery(pipe, name, parsed.delivery)
        if events:
            audit.append(
                pipe,
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
        metrics.add_delivery(
            pipe,
            endpoint.source,
            outcome,
            events=len(events),
            ignored=parsed.ignored,
            jobs=per_host,
        )
        pipe.execute()
    except NoHostsError as error:
        _count(endpoint.source, "unavailable")
        log.warning(
            "cannot queue delivery to endpoint=%s: %s", name, error, extra={**fields, "status": 503}
        )
        return _refuse(503, str(error))
    except RedisError as error:
        _count(endpoint.source, "unavailable")
        log.error(
            "cannot queue delivery to endpoint=%s: Redis: %s",
            name,
            error,
            extra={**fields, "status": 503},
        )
        return _refuse(503, "job queue unavailable; retry later")
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
    return jsonify({**summary, "queued": list(queued), "duplicates": duplicates}), (
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
