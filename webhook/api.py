"""The admin API: read jobs, hosts and updates; retry or cancel jobs; queue reconciles; behind
the admin token."""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from redis.exceptions import RedisError

from webhook.limits import count_failure, seconds_refused
from workers.fleet import (
    HostSelectionError,
    UnknownHostError,
    describe_hosts,
    list_updates,
    request_reconciles,
)
from workers.joblog import STATES, JobActionError, cancel_job, get_job, list_jobs, retry_job
from workers.queueing import JobOptions
from workers.settings import Settings

log = logging.getLogger("podhook.webhook")
blueprint = Blueprint("api", __name__)

DISABLED = "admin API disabled; set PODHOOK_ADMIN_TOKEN"
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# RQ accepts only these characters in a job id (rq.utils.validate_job_id); anything else cannot
# name a job, and asking RQ about it raises instead of saying "no such job".
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,200}")
# Endpoints anyone may read: the description of the API itself.
PUBLIC_ENDPOINTS = frozenset({"api.openapi"})
RECONCILE_FIELDS = ("hosts", "all", "dry_run", "rollback")
RECONCILE_EXAMPLE = '{"hosts": ["web-1"]} or {"all": true}'
# More names than any fleet has: a longer list is a mistake, refused before Redis is asked.
MAX_RECONCILE_HOSTS = 1000


class QueryError(ValueError):
    """Raised for a query parameter that cannot be read; the message names it."""


class BodyError(ValueError):
    """Raised for a request body that cannot be read; the message names the field."""


def _settings() -> Settings:
    return current_app.extensions["podhook"]["settings"]  # type: ignore[no-any-return]


def _redis() -> Any:
    return current_app.extensions["podhook"]["redis"]


def _error(status: int, reason: str, **fields: Any) -> Any:
    return jsonify(error=reason, status=status, **fields), status


def is_admin_token(settings: Settings, candidate: str | None) -> bool:
    """Whether ``candidate`` is the configured admin token (False when none is configured)."""
    if not settings.admin_token or candidate is None:
        return False
    return hmac.compare_digest(candidate.encode(), settings.admin_token.encode())


@blueprint.before_request
def require_admin_token() -> Any:
    """404 while no admin token is configured, 401 without the right bearer token, 429 while
    the address is over PODHOOK_ADMIN_TOKEN_LIMIT (wrong or missing tokens)."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    settings = _settings()
    if not settings.admin_token:
        return _error(404, DISABLED)
    # Checked before the token: over the limit, the right token must not answer otherwise.
    wait = seconds_refused("admin-token", request.remote_addr)
    if wait:
        reason = f"too many wrong or missing admin tokens from this address; retry in {wait} s"
        body, status = _error(429, reason, retry_after=wait)
        body.headers["Retry-After"] = str(wait)
        return body, status
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        response = _error(401, "missing Authorization: Bearer <admin token>")
    elif not is_admin_token(settings, token.strip()):
        response = _error(401, "wrong admin token")
    else:
        return None
    count_failure("admin-token", request.remote_addr)
    body, status = response
    body.headers["WWW-Authenticate"] = 'Bearer realm="podhook"'
    return body, status


@blueprint.errorhandler(RedisError)
def redis_unavailable(error: RedisError) -> Any:
    """503 naming the Redis error, so a client retries instead of seeing a 500."""
    return _error(503, f"Redis unavailable: {error}")


@blueprint.errorhandler(QueryError)
def bad_query(error: QueryError) -> Any:
    """400 naming the parameter."""
    return _error(400, str(error))


@blueprint.errorhandler(BodyError)
def bad_body(error: BodyError) -> Any:
    """400 naming the field."""
    return _error(400, str(error))


def _query(allowed: set[str]) -> dict[str, str]:
    """The query parameters, each given at most once; unknown names are refused so that a
    typo (``?stat=failed``) does not silently answer a different question."""
    values: dict[str, str] = {}
    for name in request.args:
        if name not in allowed:
            raise QueryError(f"{name}: unknown parameter; expected one of {sorted(allowed)}")
        given = request.args.getlist(name)
        if len(given) > 1:
            raise QueryError(f"{name}: given more than once")
        values[name] = given[0]
    return values


def parse_since(text: str) -> datetime:
    """A time given as ISO 8601 (UTC when it names no zone) or unix seconds.

    Raises QueryError naming ``since``.
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise QueryError(f"since: {text!r} is not a time")
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise QueryError(f"since: {text!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"since: expected ISO 8601 (2026-01-31T12:00:00Z) or unix seconds, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_limit(text: str | None) -> int:
    """A result count between 1 and MAX_LIMIT (DEFAULT_LIMIT when absent).

    Raises QueryError naming ``limit``.
    """
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise QueryError(f"limit: expected a whole number, got {text!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit: expected 1 to {MAX_LIMIT}, got {limit}")
    return limit


def _known_job_id(job_id: str) -> bool:
    return JOB_ID_PATTERN.fullmatch(job_id) is not None


def _no_job(job_id: str) -> Any:
    return _error(404, f"no job {job_id!r} (unknown or expired)")


@blueprint.get("/v1/jobs")
def jobs() -> Any:
    """Jobs of every host, newest first; filters: host, state, image, since, limit."""
    query = _query({"host", "state", "image", "since", "limit"})
    state = query.get("state")
    if state is not None and state not in STATES:
        raise QueryError(f"state: expected one of {list(STATES)}, got {state!r}")
    records = list_jobs(
        _redis(),
        host=query.get("host") or None,
        state=state,
        image=query.get("image") or None,
        since=parse_since(query["since"]) if "since" in query else None,
        limit=parse_limit(query.get("limit")),
    )
    return jsonify([record.to_dict() for record in records])


@blueprint.get("/v1/jobs/<job_id>")
def job(job_id: str) -> Any:
    """One job with its push, state and per-container report; 404 when unknown or expired."""
    _query(set())
    record = get_job(_redis(), job_id) if _known_job_id(job_id) else None
    if record is None:
        return _no_job(job_id)
    return jsonify(record.to_dict())


@blueprint.post("/v1/jobs/<job_id>/retry")
def retry(job_id: str) -> Any:
    """Queue a failed (or cancelled) job again; 409 with the reason for any other state."""
    redis = _redis()
    if not _known_job_id(job_id) or get_job(redis, job_id) is None:
        return _no_job(job_id)
    try:
        record = retry_job(redis, job_id)
    except JobActionError as error:
        return _error(409, str(error))
    return jsonify(record.to_dict())


@blueprint.post("/v1/jobs/<job_id>/cancel")
def cancel(job_id: str) -> Any:
    """Cancel a job that is still waiting; 409 with the reason once it has started or ended."""
    redis = _redis()
    if not _known_job_id(job_id) or get_job(redis, job_id) is None:
        return _no_job(job_id)
    try:
        record = cancel_job(redis, job_id)
    except JobActionError as error:
        return _error(409, str(error))
    return jsonify(record.to_dict())


@blueprint.get("/v1/hosts")
def hosts() -> Any:
    """Every registered host with heartbeat age, queue depth, workers, failures, containers
    and problems (containers whose latest report failed)."""
    _query(set())
    found = describe_hosts(_redis(), stale_after=_settings().host_stale_after)
    return jsonify([summary.to_dict() for summary in found])


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BodyError(f"{name}: expected true, false or null, got {json.dumps(value)}")
    return value


def parse_reconcile_body(data: bytes) -> tuple[list[str] | None, bool | None, bool | None]:
    """The hosts (None for every live host), ``dry_run`` and ``rollback`` of a reconcile
    request's JSON body.

    Raises BodyError naming the field that is missing, unknown, of the wrong type, or
    contradicts another.
    """
    if not data.strip():
        raise BodyError(f"body: expected a JSON object such as {RECONCILE_EXAMPLE}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise BodyError(f"body: not JSON; expected {RECONCILE_EXAMPLE}") from None
    if not isinstance(body, dict):
        raise BodyError(f"body: expected a JSON object such as {RECONCILE_EXAMPLE}")
    for name in body:
        if name not in RECONCILE_FIELDS:
            raise BodyError(f"{name}: unknown field; expected one of {list(RECONCILE_FIELDS)}")
    every = body.get("all", False)
    if not isinstance(every, bool):
        raise BodyError(f"all: expected true or false, got {json.dumps(every)}")
    named = body.get("hosts")
    if named is not None:
        if every:
            raise BodyError("hosts: give hosts or all, not both")
        if (
            not isinstance(named, list)
            or not named
            or not all(isinstance(host, str) and host.strip() for host in named)
        ):
            raise BodyError("hosts: expected a non-empty list of host names")
        if len(named) > MAX_RECONCILE_HOSTS:
            raise BodyError(f"hosts: at most {MAX_RECONCILE_HOSTS} names")
    elif not every:
        raise BodyError(f"body: name the hosts or ask for all: {RECONCILE_EXAMPLE}")
    hosts = [host.strip() for host in named] if named is not None else None
    return hosts, _optional_bool(body, "dry_run"), _optional_bool(body, "rollback")


@blueprint.post("/v1/reconcile")
def reconcile() -> Any:
    """Queue a reconcile on the hosts named, or on every live host: 202 with each host's job.

    404 naming unknown hosts and 409 naming stale ones (nothing queued then); 400 for a body
    that cannot be read.
    """
    _query(set())
    hosts, dry_run, rollback = parse_reconcile_body(request.get_data(cache=False))
    settings = _settings()
    try:
        requested = request_reconciles(
            _redis(),
            hosts,
            stale_after=settings.host_stale_after,
            options=JobOptions.from_settings(settings),
            dry_run=dry_run,
            rollback=rollback,
        )
    except HostSelectionError as error:
        status = 404 if isinstance(error, UnknownHostError) else 409
        return _error(status, str(error), hosts=error.reasons)
    log.info(
        "reconcile asked for %s: %s",
        "every live host" if hosts is None else "hosts",
        ", ".join(f"{q.host}={q.job_id}" for q in requested.queued),
    )
    return jsonify(requested.to_dict()), 202


@blueprint.get("/v1/updates")
def updates() -> Any:
    """Deliveries newest first, each with its jobs and their outcomes; filters: image, host,
    since, limit."""
    query = _query({"image", "host", "since", "limit"})
    found = list_updates(
        _redis(),
        image=query.get("image") or None,
        host=query.get("host") or None,
        since=parse_since(query["since"]).timestamp() if "since" in query else None,
        limit=parse_limit(query.get("limit")),
    )
    return jsonify([update.to_dict() for update in found])


ROLLOUT_ID_PATTERN = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")
ROLLOUT_ACTIONS = ("pause", "resume", "abort", "promote")
APPROVAL_FIELDS = ("reference", "digest", "host")


@blueprint.get("/v1/rollouts")
def rollouts() -> Any:
    """Rollouts newest first, each with its waves, their hosts and states, and its history."""
    from workers.rollouts import list_rollouts  # noqa: PLC0415

    query = _query({"limit"})
    found = list_rollouts(_redis(), parse_limit(query.get("limit")))
    return jsonify([rollout.to_dict() for rollout in found])


def _no_rollout(rollout_id: str) -> Any:
    return _error(404, f"no rollout {rollout_id!r}")


@blueprint.get("/v1/rollouts/<rollout_id>")
def rollout(rollout_id: str) -> Any:
    """One rollout; 404 when unknown or expired."""
    from workers.rollouts import get_rollout  # noqa: PLC0415

    _query(set())
    found = get_rollout(_redis(), rollout_id) if ROLLOUT_ID_PATTERN.fullmatch(rollout_id) else None
    return jsonify(found.to_dict()) if found is not None else _no_rollout(rollout_id)


@blueprint.post("/v1/rollouts/<rollout_id>/<action>")
def control_rollout(rollout_id: str, action: str) -> Any:
    """Pause, resume, abort or promote a rollout: the rollout as it is then; 404 for an
    unknown rollout or action, 409 with the reason when its state does not allow it."""
    from workers import rollouts as rollout_ops  # noqa: PLC0415
    from workers.gates import settings_now  # noqa: PLC0415

    _query(set())
    if action not in ROLLOUT_ACTIONS:
        return _error(404, f"no action {action!r}; expected one of {list(ROLLOUT_ACTIONS)}")
    redis = _redis()
    if (
        not ROLLOUT_ID_PATTERN.fullmatch(rollout_id)
        or rollout_ops.get_rollout(redis, rollout_id) is None
    ):
        return _no_rollout(rollout_id)
    settings = _settings()
    try:
        changed = getattr(rollout_ops, action)(redis, settings, rollout_id, settings_now(settings))
    except rollout_ops.RolloutError as error:
        return _error(409, str(error))
    log.info("rollout %s: %s by the admin API", rollout_id, action)
    return jsonify(changed.to_dict())


@blueprint.get("/v1/approvals")
def approvals() -> Any:
    """Updates that wait for an approval (containers labeled io.podhook.approval=required)."""
    from dataclasses import asdict  # noqa: PLC0415

    from workers.approvals import pending_approvals  # noqa: PLC0415

    _query(set())
    return jsonify([asdict(item) for item in pending_approvals(_redis())])


def parse_approval_body(data: bytes) -> tuple[str, str | None, str | None]:
    """The reference, digest (optional) and host (optional) of an approval's JSON body.
    Raises BodyError naming the field at fault."""
    try:
        body = json.loads(data) if data.strip() else None
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise BodyError('body: expected a JSON object such as {"reference": "host/app:1"}')
    for name in body:
        if name not in APPROVAL_FIELDS:
            raise BodyError(f"{name}: unknown field; expected one of {list(APPROVAL_FIELDS)}")
    values = []
    for name in APPROVAL_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise BodyError(f"{name}: expected a non-empty string")
        values.append(value.strip() if value else None)
    reference, digest, host = values
    if reference is None:
        raise BodyError("reference: required")
    if digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise BodyError("digest: expected sha256:<64 hex digits>")
    return reference, digest, host


@blueprint.post("/v1/approvals")
def approve() -> Any:
    """Approve the pending update of a reference (on one host, or all): the updates approved,
    whose hosts converge now; 404 when none waits and no digest was named."""
    from workers.approvals import NothingToApproveError, approve_updates  # noqa: PLC0415

    _query(set())
    reference, digest, host = parse_approval_body(request.get_data(cache=False))
    settings = _settings()
    try:
        approved = approve_updates(
            _redis(), reference, digest, host, JobOptions.from_settings(settings)
        )
    except NothingToApproveError as error:
        return _error(404, str(error))
    log.info("%s approved by the admin API on %d host(s)", reference, len(approved))
    return jsonify(
        {
            "reference": reference,
            "approved": [{"host": a.host, "digest": a.digest} for a in approved],
        }
    )


@blueprint.get("/openapi.yaml")
def openapi() -> Any:
    """The OpenAPI 3.1 description of every podhook endpoint (no token needed)."""
    text = resources.files("webhook").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return Response(text, mimetype="application/yaml")
