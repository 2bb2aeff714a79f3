"""The status page at ``/``: hosts, their containers, recent updates and failures, for a browser."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from redis.exceptions import RedisError

from webhook.api import is_admin_token
from workers.fleet import describe_hosts, list_updates
from workers.joblog import list_jobs
from workers.settings import Settings

log = logging.getLogger("podhook.webhook")
blueprint = Blueprint("page", __name__)

RECENT_UPDATES = 20
RECENT_FAILED_JOBS = 10
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


def _login_form(error: str | None = None, status: int = 200) -> Any:
    return render_template("login.html", error=error), status


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
    try:
        hosts = describe_hosts(redis)
        updates = list_updates(redis, limit=RECENT_UPDATES)
        failed_jobs = list_jobs(redis, state="failed", limit=RECENT_FAILED_JOBS)
    except RedisError as error:
        log.error("status page: Redis: %s", error)
        return render_template(
            "page.html", error=f"Redis unavailable: {error}", refresh=REFRESH_SECONDS
        ), 503
    return render_template(
        "page.html",
        hosts=hosts,
        updates=updates,
        failed_jobs=failed_jobs,
        refresh=REFRESH_SECONDS,
        generated_at=time.time(),
    )


@blueprint.post("/login")
def login() -> Any:
    """Check the admin token typed into the form and start a session (an HttpOnly,
    SameSite=Strict cookie signed with a key derived from that token)."""
    settings = _settings()
    if not settings.admin_token:
        return _disabled()
    if not is_admin_token(settings, request.form.get("token", "").strip()):
        log.warning("status page: wrong admin token from %s", request.remote_addr)
        return _login_form("Wrong token.", 401)
    session.clear()
    session["admin"] = True
    return redirect(url_for("page.index"), code=303)


@blueprint.post("/logout")
def logout() -> Any:
    """End the session and go back to the login form."""
    if not _settings().admin_token:
        return _disabled()
    session.clear()
    return redirect(url_for("page.index"), code=303)
