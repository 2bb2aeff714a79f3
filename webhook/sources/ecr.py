"""Amazon ECR pushes: EventBridge "ECR Image Action" events posted by an API destination.

Format: the EventBridge envelope ``{version, id, detail-type, source, account, region, time,
detail: {action-type, result, repository-name, image-tag, image-digest, ...}}``; see
docs.aws.amazon.com/AmazonECR/latest/userguide/ecr-eventbridge.html. ECR calls no webhook itself:
an EventBridge rule sends the event to an API destination, whose connection adds a static
API-key header (the header name is the user's choice). The event names no registry host; it is
the account's private registry, ``<account>.dkr.ecr.<region>.amazonaws.com``.
"""

from __future__ import annotations

from collections.abc import Mapping

from webhook.auth import header_token
from webhook.sources import (
    ParseResult,
    PayloadError,
    Source,
    build_event,
    load_json,
    register,
    require,
    require_str,
)

# The header podhook reads the secret from unless the endpoint's ``header`` names another one;
# it is the API destination connection's ``ApiKeyName``.
DEFAULT_HEADER = "Authorization"


def registry_host(account: str, region: str) -> str:
    """The private registry host of an AWS account in a region.

    China regions live under ``amazonaws.com.cn`` (ECR endpoints table in the AWS General
    Reference). Raises PayloadError when the account or region cannot be part of a host name.
    """
    if not account.isdigit():
        raise PayloadError(f"field 'account' must be an AWS account number, not {account!r}")
    if not region.replace("-", "").isalnum():
        raise PayloadError(f"field 'region' is not an AWS region: {region!r}")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{suffix}"


def parse(headers: Mapping[str, str], body: bytes) -> ParseResult:
    """Read one EventBridge event: a PushEvent for a successful tagged ECR push, else ignored.

    Other ECR events (deletes, archive and restore, scans, replication, pull-through cache),
    failed pushes and untagged pushes (``image-tag`` is ``""``) are counted as ignored. Raises
    PayloadError naming the field when the body is not an EventBridge event.
    """
    event = load_json(body)
    if not isinstance(event, dict):
        raise PayloadError("body must be a JSON object (an EventBridge event)")
    delivery = event.get("id") if isinstance(event.get("id"), str) else None
    source = require_str(event, "source")
    detail_type = require_str(event, "detail-type")
    if source != "aws.ecr" or detail_type != "ECR Image Action":
        return ParseResult(ignored=1, delivery=delivery)
    detail = require(event, "detail")
    if not isinstance(detail, dict):
        raise PayloadError("field 'detail' must be an object")
    action = require_str(event, "detail.action-type")
    result = require_str(event, "detail.result")
    tag = detail.get("image-tag")
    if action != "PUSH" or result != "SUCCESS" or not tag:
        return ParseResult(ignored=1, delivery=delivery)
    if not isinstance(tag, str):
        raise PayloadError("field 'detail.image-tag' must be a string")
    host = registry_host(require_str(event, "account"), require_str(event, "region"))
    push = build_event(
        "detail",
        host,
        require_str(event, "detail.repository-name"),
        tag,
        detail.get("image-digest"),
        source="ecr",
        delivery=delivery,
    )
    return ParseResult(events=[push], delivery=delivery)


SOURCE = register(Source(name="ecr", parse=parse, authenticate=header_token(DEFAULT_HEADER)))
