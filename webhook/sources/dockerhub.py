"""Docker Hub repository webhooks: one JSON body per push, naming the repository and the tag.

Format: docker/docs ``content/manuals/docker-hub/repos/manage/webhooks.md`` ("Example webhook
payload"). The body has no event type (Docker Hub only sends pushes), no digest and no registry
host, which is always Docker Hub. Docker Hub can neither sign a delivery nor send a header
(docker/roadmap#51), so the endpoint's secret travels in the URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.auth import url_secret
from webhook.sources import ParseResult, PayloadError, Source, load_json, register, require_str
from workers.events import EventError, make_event
from workers.reference import DEFAULT_REGISTRY


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a Docker Hub push: one PushEvent for ``repository.repo_name`` at ``push_data.tag``.

    The digest is always ``None``. A multi-arch push arrives as several identical deliveries
    (docker/hub-feedback#2148); each yields the same event. Raises PayloadError naming the field
    when the body is not a Docker Hub push.
    """
    payload = load_json(body)
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object")
    repository = require_str(payload, "repository.repo_name")
    tag = require_str(payload, "push_data.tag")
    try:
        event = make_event(DEFAULT_REGISTRY, repository, tag, None, source="dockerhub")
    except EventError as error:
        raise PayloadError(f"repository.repo_name/push_data.tag: {error}") from None
    return ParseResult(events=[event])


SOURCE = register(Source(name="dockerhub", parse=parse, authenticate=url_secret))
