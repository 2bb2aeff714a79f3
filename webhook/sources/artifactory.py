"""JFrog Artifactory pushes: predefined webhooks of the ``docker`` domain, event ``pushed``.

Format (jfrog.com/help, "Webhooks" and "domain-docker"): ``{"domain": "docker", "event_type":
"pushed", "data": {repo_key, path, name, sha256, size, image_name, tag, platforms[]},
"subscription_key", "jpd_origin", "source"}``. ``sha256`` is the bare hex checksum of the
manifest file, i.e. the manifest digest. The secret token is sent verbatim in
``X-JFrog-Event-Auth`` unless "use secret for payload signing" is checked.

The payload names no docker host: it depends on the Artifactory docker access method. podhook
takes the repository to be ``image_name`` alone, which is what clients pull with the
subdomain (``<repo_key>.art.example.com/<image>``) and port (``art.example.com:5001/<image>``)
methods; the endpoint's ``registry`` is that host. With the repository path method
(``art.example.com/<repo_key>/<image>``) the references containers use do not match.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.auth import header_token
from webhook.sources import (
    UNKNOWN_REGISTRY,
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json_object,
    register,
    require,
    require_str,
)


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read one Artifactory webhook event: a PushEvent for a docker tag push, else ignored.

    Other domains (artifact, build, ...) and other docker events (deleted, promoted) are
    counted as ignored. The registry is left as UNKNOWN_REGISTRY for the endpoint to fill in.
    Raises PayloadError naming the field when the body is not a webhook event.
    """
    event = load_json_object(body)
    domain = require_str(event, "domain")
    event_type = require_str(event, "event_type")
    if domain != "docker" or event_type != "pushed":
        return ParseResult(ignored=1)
    data = require(event, "data")
    if not isinstance(data, dict):
        raise PayloadError("field 'data' must be an object")
    tag = data.get("tag")
    if not tag:
        return ParseResult(ignored=1)
    if not isinstance(tag, str):
        raise PayloadError("field 'data.tag' must be a string")
    checksum = data.get("sha256")
    push = build_event(
        "data",
        UNKNOWN_REGISTRY,
        require_str(event, "data.image_name"),
        tag,
        f"sha256:{checksum}" if isinstance(checksum, str) else None,
        source="artifactory",
    )
    return ParseResult(events=[push])


SOURCE = register(
    Source(
        name="artifactory",
        parse=parse,
        authenticate=header_token("X-JFrog-Event-Auth"),
        needs_registry=True,
    )
)
