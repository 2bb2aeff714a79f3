"""The status page at ``/``: hosts, their containers and problems, reconciles, recent updates
and failures, for a browser; and its one action, asking hosts to reconcile."""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from redis.exceptions import RedisError

from webhook.api import is_admin_token
from webhook.limits import count_failure, seconds_refused
from webhook.sessions import end_session, start_session
from workers import rollouts as rollout_ops
from workers.approvals import NothingToApproveError, approve_updates, pending_approvals
from workers.fleet import (
    HostSelectionError,
    describe_hosts,
    is_reconcile_job,
    list_reconciles,
    list_updates,
    request_reconciles,
)
from workers.gates import settings_now
from workers.joblog import list_jobs
from workers.queueing import JobOptions
from workers.rollouts import list_rollouts
from workers.settings import Settings

log = logging.getLogger("podhook.webhook")
blueprint = Blueprint("page", __name__)

RECENT_UPDATES = 20
RECENT_FAILED_JOBS = 10
RECENT_RECONCILES = 10
RECENT_ROLLOUTS = 10
REFRESH_SECONDS = 10
# The page needs nothing but its own stylesheet and same-origin forms; framing is refused so
# the logged-in page cannot be clickjacked.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _settings() -> Settings:
    return current_app.extensions["podhook"]["settings"]  # type: ignore[no-any-return]


@blueprint.after_request
def add_security_headers(response: Any) -> Any:
    """No caching, no framing, nothing loaded but the page's own stylesheet."""
    response.headers.update(SECURITY_HEADERS)
    return response


@blueprint.app_template_filter("age")
def format_age(seconds: float | None) -> str:
    """A duration the way people say it: ``12 s``, ``4 min``, ``3 h``, ``2 d``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


@blueprint.app_template_filter("utc")
def format_utc(moment: float | datetime | None) -> str:
    """A time as ``2026-01-31 12:00:05 UTC``."""
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@blueprint.app_template_filter("ago")
def format_ago(moment: float | datetime | None) -> str:
    """How long before now a time was: ``4 min ago``."""
    if moment is None:
        return "-"
    stamp = moment.timestamp() if isinstance(moment, datetime) else moment
    return f"{format_age(time.time() - stamp)} ago"


def _disabled() -> Any:
    return render_template("disabled.html"), 404


def csrf_token() -> str:
    """The session's form token, made on first use: every form that changes something carries
    it, so another site (even a same-site one the SameSite cookie lets through) cannot post."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _is_csrf_token(candidate: str | None) -> bool:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not expected or not candidate:
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())


def _login_form(error: str | None = None, status: int = 200, retry_after: int = 0) -> Any:
    """The login form, carrying the form token of the browser's anonymous session."""
    unavailable = getattr(session, "error", None)  # the session could not be read
    if unavailable and error is None:
        error, status = unavailable, 503
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    return render_template("login.html", error=error, csrf=csrf_token()), status, headers


@blueprint.get("/")
def index() -> Any:
    """The status page for a logged-in browser, the login form otherwise; 404 while no admin
    token is configured."""
    settings = _settings()
    if not settings.admin_token:
        return _disabled()
    if not session.get("admin"):
        return _login_form()
    redis = current_app.extensions["podhook"]["redis"]
    notices = get_flashed_messages(with_categories=True)
    try:
        hosts = describe_hosts(redis, stale_after=settings.host_stale_after)
        reconciles = list_reconciles(redis, limit=RECENT_RECONCILES)
        updates = list_updates(redis, limit=RECENT_UPDATES)
        failed_jobs = list_jobs(redis, state="failed", limit=RECENT_FAILED_JOBS)
        rollouts = list_rollouts(redis, RECENT_ROLLOUTS)
        approvals = pending_approvals(redis)
    except RedisError as error:
        log.error("status page: Redis: %s", error)
        return render_template(
            "page.html",
            error=f"Redis unavailable: {error}",
            csrf=csrf_token(),
            refresh=REFRESH_SECONDS,
        ), 503
    return render_template(
        "page.html",
        hosts=hosts,
        reconciles=reconciles,
        updates=updates,
        failed_jobs=failed_jobs,
        rollouts=rollouts,
        approvals=approvals,
        is_reconcile_job=is_reconcile_job,
        notices=notices,
        csrf=csrf_token(),
        refresh=REFRESH_SECONDS,
        generated_at=time.time(),
    )


@blueprint.post("/login")
def login() -> Any:
    """Check the admin token typed into the form and start a session stored in Redis (its
    cookie: HttpOnly, SameSite=Strict, signed with a key derived from that token).

    429 while the address is over PODHOOK_LOGIN_LIMIT, before the token is looked at; 403
    without the form token of the browser's login form; 401 for a wrong token (counted)."""
    settings = _settings()
    if not settings.admin_token:
        return _disabled()
    address = request.remote_addr
    wait = seconds_refused("login", address)
    if wait:
        return _login_form(f"Too many wrong tokens: try again in {wait} s.", 429, wait)
    if not _is_csrf_token(request.form.get("csrf")):
        log.warning("status page: login without a valid form token from %s", address)
        return _login_form("This form has expired: log in again.", 403)
    if not is_admin_token(settings, request.form.get("token", "").strip()):
        log.warning("status page: wrong admin token from %s", address)
        count_failure("login", address)
        return _login_form("Wrong token.", 401)
    try:
        start_session(session, {"admin": True, "csrf": secrets.token_urlsafe(32)})
    except RedisError as error:
        log.error("status page: session not started: Redis: %s", error)
        return _login_form(f"Redis unavailable: {error}", 503)
    return redirect(url_for("page.index"), code=303)


@blueprint.post("/reconcile")
def reconcile() -> Any:
    """Queue a reconcile of the host named in the form (``host``), or of every live host
    (``all``), a dry run with ``dry_run``; then back to the page, which says what was queued
    or why nothing was. Needs the session and its form token (403 without it)."""
    settings = _settings()
    if not settings.admin_token:
        return _disabled()
    if not session.get("admin"):
        return _login_form("Log in first.", 401)
    if not _is_csrf_token(request.form.get("csrf")):
        log.warning(
            "status page: reconcile without a valid form token from %s", request.remote_addr
        )
        return render_template("refused.html"), 403
    host = request.form.get("host", "").strip()
    every = request.form.get("all") == "1"
    if bool(host) == every:
        return render_template("refused.html", reason="Name one host, or all hosts."), 400
    dry_run = True if request.form.get("dry_run") == "1" else None
    what = "Check (dry run)" if dry_run else "Reconcile"
    try:
        requested = request_reconciles(
            current_app.extensions["podhook"]["redis"],
            None if every else [host],
            stale_after=settings.host_stale_after,
            options=JobOptions.from_settings(settings),
            dry_run=dry_run,
        )
    except HostSelectionError as error:
        flash(f"{what} not queued: {error}", "error")
    except RedisError as error:
        log.error("status page: Redis: %s", error)
        flash(f"{what} not queued: Redis unavailable: {error}", "error")
    else:
        for queued in requested.queued:
            joined = " (joined the one already waiting)" if queued.duplicate else ""
            flash(f"{what} queued on {queued.host}: {queued.job_id}{joined}", "ok")
        for skipped, reason in requested.skipped.items():
            flash(f"{skipped} left out: {reason}", "note")
    return redirect(url_for("page.index", _anchor="reconciles"), code=303)


def _allowed_form() -> Any:
    """None when the form comes from a logged-in page with its form token, else the answer."""
    if not _settings().admin_token:
        return _disabled()
    if not session.get("admin"):
        return _login_form("Log in first.", 401)
    if not _is_csrf_token(request.form.get("csrf")):
        log.warning("status page: a form without a valid token from %s", request.remote_addr)
        return render_template("refused.html"), 403
    return None


@blueprint.post("/rollouts")
def control_rollout() -> Any:
    """Pause, resume, abort or promote the rollout named in the form; then back to the page,
    which says what happened or why not. Needs the session and its form token."""
    refused = _allowed_form()
    if refused is not None:
        return refused
    rollout = request.form.get("rollout", "").strip()
    action = request.form.get("action", "")
    if action not in ("pause", "resume", "abort", "promote") or not rollout:
        return render_template("refused.html", reason="Name a rollout and an action."), 400
    settings = _settings()
    try:
        changed = getattr(rollout_ops, action)(
            current_app.extensions["podhook"]["redis"], settings, rollout, settings_now(settings)
        )
    except rollout_ops.RolloutError as error:
        flash(f"Rollout {rollout}: {error}", "error")
    except RedisError as error:
        flash(f"Rollout {rollout}: Redis unavailable: {error}", "error")
    else:
        flash(f"Rollout {changed.id}: {changed.steps[-1].text}", "ok")
    return redirect(url_for("page.index", _anchor=f"rollout-{rollout}"), code=303)


@blueprint.post("/approve")
def approve() -> Any:
    """Approve the pending update named in the form (reference, digest, host); its host
    converges now."""
    refused = _allowed_form()
    if refused is not None:
        return refused
    reference = request.form.get("reference", "").strip()
    digest = request.form.get("digest", "").strip() or None
    host = request.form.get("host", "").strip() or None
    if not reference:
        return render_template("refused.html", reason="Name the reference to approve."), 400
    try:
        approved = approve_updates(
            current_app.extensions["podhook"]["redis"],
            reference,
            digest,
            host,
            JobOptions.from_settings(_settings()),
        )
    except NothingToApproveError as error:
        flash(str(error), "error")
    except RedisError as error:
        flash(f"Not approved: Redis unavailable: {error}", "error")
    else:
        for item in approved:
            flash(f"Approved {reference}@{item.digest[:19]} on {item.host}: it updates now", "ok")
    return redirect(url_for("page.index", _anchor="rollouts"), code=303)


@blueprint.post("/logout")
def logout() -> Any:
    """End the session (deleted from Redis: its cookie opens nothing afterwards) and go back to
    the login form. Needs the session's form token (403 without it)."""
    if not _settings().admin_token:
        return _disabled()
    if not session.get("admin"):
        return redirect(url_for("page.index"), code=303)
    if not _is_csrf_token(request.form.get("csrf")):
        log.warning("status page: logout without a valid form token from %s", request.remote_addr)
        return render_template("refused.html"), 403
    try:
        end_session(session)
    except RedisError as error:
        log.error("status page: session not ended: Redis: %s", error)
        reason = f"Not logged out: Redis unavailable: {error}"
        return render_template("refused.html", reason=reason), 503
    return redirect(url_for("page.index"), code=303)
