"""The Flask application factory: settings, clients and blueprints are wired here, once."""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from flask import Flask, jsonify
from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.exceptions import HTTPException

from webhook.endpoints import build_endpoints
from webhook.metrics import register_metrics
from webhook.sessions import RedisSessionInterface
from webhook.sources import get_source, source_names
from workers.redis_connection import connect
from workers.settings import Settings, load_settings

log = logging.getLogger("podhook.webhook")

# Seconds the app waits on one Redis command (and on a connection). A Redis that hangs rather
# than refuses must still give a delivery its 503 before the sender gives up (Harbor waits
# 3 s, distribution 5 s); a healthy one answers in a millisecond.
REDIS_TIMEOUT = 1.0
# Counting a delivery in the metrics is best effort: it never holds an answer for longer.
METRICS_TIMEOUT = 0.25


def create_app(
    settings: Settings | None = None, redis: Redis | None = None, **overrides: Any
) -> Flask:
    """Build the webhook app.

    ``settings`` defaults to ``load_settings()`` (environment and settings file); keyword
    ``overrides`` replace single settings (for tests). ``redis`` defaults to a client for
    ``settings.redis_url``. Raises SettingsError or EndpointConfigError for bad configuration,
    so a misconfigured service fails at start rather than on the first delivery.
    """
    settings = settings or load_settings(overrides=overrides)
    names = source_names()
    needs_registry = {name for name in names if get_source(name).needs_registry}  # type: ignore[union-attr]
    endpoints = build_endpoints(
        settings.endpoints,
        source_names=names,
        default_secret=settings.webhook_token,
        insecure=settings.insecure,
        needs_registry=needs_registry,
    )
    if redis is None:
        # Short timeouts: a delivery must get its 503 before the sender (or gunicorn) gives up.
        redis = connect(
            settings, role="app", socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )

    app = Flask(__name__)
    # werkzeug answers //v1/webhooks/<name>/<secret> with a redirect whose Location repeats
    # the secret: such a path is not found instead.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["podhook"] = {
        "settings": settings,
        "redis": redis,
        "metrics_redis": _metrics_client(redis),
        "endpoints": endpoints,
    }
    if settings.admin_token:
        # The page's session cookie is signed with a key derived from the admin token, so
        # changing the token logs every browser out.
        app.secret_key = hmac.new(
            settings.admin_token.encode(), b"podhook page session", hashlib.sha256
        ).hexdigest()
    # Sessions live in Redis, the cookie (HttpOnly, SameSite=Strict, Secure over TLS or with
    # PODHOOK_SECURE_COOKIES) carries only their signed id: webhook/sessions.py.
    app.session_interface = RedisSessionInterface()

    from webhook import api, page
    from webhook.routes import blueprint

    app.register_blueprint(blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(page.blueprint)
    register_metrics(app)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return jsonify(error=error.description, status=error.code), error.code

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Any:
        log.exception("unexpected error while serving a request")
        return jsonify(error="internal error; see the podhook log", status=500), 500

    unsecured = sorted(e.name for e in endpoints.values() if not e.secret and not e.insecure)
    if unsecured:
        log.warning(
            "no secret configured for endpoints %s: their deliveries are refused "
            "(set PODHOOK_WEBHOOK_TOKEN)",
            ", ".join(unsecured),
        )
    return app


def _metrics_client(redis: Redis) -> Redis:
    """A client of ``redis``'s server whose commands give up after METRICS_TIMEOUT, untried.

    A client whose pool is not a plain ConnectionPool (Sentinel's follows the primary) is
    used as it is.
    """
    pool = redis.connection_pool
    if type(pool) is not ConnectionPool:
        return redis
    quick = Retry(NoBackoff(), 0)
    options = {
        **pool.connection_kwargs,
        "socket_timeout": METRICS_TIMEOUT,
        "socket_connect_timeout": METRICS_TIMEOUT,
        "retry": quick,
    }
    return Redis(
        connection_pool=ConnectionPool(connection_class=pool.connection_class, **options),
        retry=quick,
    )
