"""Quay (quay.io and Red Hat Quay) repository notifications: the ``repo_push`` webhook body.

Format: Red Hat Quay "Repository notifications" (``use_red_hat_quay``, "Repository Push") and
quay/quay ``notifications/__init__.py`` (``build_repository_event_data``). Every Quay event body
is ``{"repository", "namespace", "name", "docker_url", "homepage", ...}``; a push adds
``updated_tags``. There is no event type field, no digest, no header and no signature, so the
endpoint's secret travels in the URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.auth import url_secret
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json_object,
    register,
    require_str,
)


def _updated_tags(payload: dict) -> list[str]:
    tags = payload["updated_tags"]
    # The 2013 quay.io body mapped each tag to an image id (gist jakedt/7533338); now it is a list.
    if isinstance(tags, dict):
        tags = list(tags)
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise PayloadError("field 'updated_tags' must be a list of tag names")
    return tags


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read a Quay notification: one PushEvent per tag of a ``repo_push``'s ``updated_tags``.

    The host is the part of ``docker_url`` before the first ``/`` (Quay's SERVER_HOSTNAME) and
    the repository is ``repository``; the digest is always ``None``. Build, mirror, vulnerability
    and expiry notifications (Quay bodies without ``updated_tags``) count as one ignored event.
    Raises PayloadError naming the field when the body is not a Quay notification, or when
    ``docker_url`` does not name ``repository`` on a host.
    """
    payload = load_json_object(body)
    repository = require_str(payload, "repository")
    docker_url = require_str(payload, "docker_url")
    if "updated_tags" not in payload:
        # Quay's bodies carry no event name (notifications/notificationevent.py); every other
        # event shares build_repository_event_data, so a repository body without updated_tags
        # is some other notification pointed at this URL.
        return ParseResult(ignored=1)
    tags = _updated_tags(payload)
    # docker_url is "<SERVER_HOSTNAME>/<repository>" by construction; the doc sample's "name" and
    # "homepage" disagree with "repository", but docker_url and repository agree.
    host, _, path = docker_url.partition("/")
    if not host or path != repository:
        raise PayloadError(
            f"field 'docker_url' ({docker_url!r}) is not the host followed by 'repository' "
            f"({repository!r})"
        )
    if not tags:
        return ParseResult(ignored=1)
    pushes = [
        build_event(f"updated_tags {tag!r}", host, repository, tag, None, source="quay")
        for tag in tags
    ]
    return ParseResult(events=pushes)


SOURCE = register(Source(name="quay", parse=parse, authenticate=url_secret))
