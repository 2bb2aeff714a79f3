"""GET /metrics: podhook's Prometheus metrics, read from Redis at each scrape."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from workers import metrics

blueprint = Blueprint("podhook_metrics", __name__)

# Answers that Flask gives for the webhook route before or instead of it: ``receive`` records
# every answer it returns itself.
_FLASK_OUTCOMES = {413: "too_large", 500: "error"}


def register_metrics(app: Flask) -> None:
    """Serve GET /metrics on ``app`` and count the deliveries Flask answers itself (413, 500).

    Call it once, after ``create_app`` has put the Redis client in ``app.extensions``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.RedisCollector(app.extensions["podhook"]["redis"]))
    app.extensions["podhook_metrics"] = registry
    app.register_blueprint(blueprint)


@blueprint.get("/metrics")
def serve_metrics() -> Any:
    """The metrics in the format the scraper asks for (Prometheus text or OpenMetrics)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(current_app.extensions["podhook_metrics"])
    return current_app.response_class(body, status=200, content_type=content_type)


@blueprint.after_app_request
def count_flask_answers(response: Any) -> Any:
    """Count a delivery that Flask answered with 413 (too large) or 500 (unexpected error)."""
    outcome = _FLASK_OUTCOMES.get(response.status_code)
    if outcome is not None and request.endpoint == "podhook.receive":
        state = current_app.extensions["podhook"]
        endpoint = state["endpoints"].get((request.view_args or {}).get("name"))
        source = endpoint.source if endpoint is not None else metrics.UNKNOWN_SOURCE
        metrics.record_delivery(state["redis"], source, outcome)
    return response
