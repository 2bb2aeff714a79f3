"""Docker Hub repository webhooks: one JSON body per push, naming the repository and the tag.

Format: docker/docs ``content/manuals/docker-hub/repos/manage/webhooks.md`` ("Example webhook
payload"). The body has no event type (Docker Hub only sends pushes), no digest and no registry
host, which is always Docker Hub. Docker Hub can neither sign a delivery nor send a header
(docker/roadmap#51), so the endpoint's secret travels in the URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.auth import url_secret
from webhook.sources import (
    ParseResult,
    Source,
    build_event,
    load_json_object,
    register,
    require_str,
)
from workers.reference import DEFAULT_REGISTRY


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a Docker Hub push: one PushEvent for ``repository.repo_name`` at ``push_data.tag``.

    The digest is always ``None``. A multi-arch push arrives as several identical deliveries
    (docker/hub-feedback#2148); each yields the same event. Raises PayloadError naming the field
    when the body is not a Docker Hub push.
    """
    payload = load_json_object(body)
    repository = require_str(payload, "repository.repo_name")
    tag = require_str(payload, "push_data.tag")
    where = "repository.repo_name/push_data.tag"
    event = build_event(where, DEFAULT_REGISTRY, repository, tag, None, source="dockerhub")
    return ParseResult(events=[event])


SOURCE = register(Source(name="dockerhub", parse=parse, authenticate=url_secret))
