"""Helpers shared by the source adapter tests: sample payloads, deliveries, signatures, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from webhook.auth import AuthError
from webhook.endpoints import Delivery, Endpoint
from webhook.sources import ParseResult, Source

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"


@dataclass(frozen=True)
class Samples:
    """The published sample payloads of one source, under ``tests/payloads/<source>/``."""

    source: str

    def read(self, name: str) -> bytes:
        """The sample's bytes, exactly as stored."""
        return (PAYLOADS / self.source / name).read_bytes()

    def json(self, name: str) -> Any:
        """The sample decoded from JSON, for a test to change before it encodes it again."""
        return json.loads(self.read(name))


def tuples(result: ParseResult) -> list[tuple[str, str, str, str | None]]:
    """Each event of a parse result as ``(registry, repository, tag, digest)``."""
    return [(e.registry, e.repository, e.tag, e.digest) for e in result.events]


def remove_field(payload: Any, path: str) -> None:
    """Delete the field at a dotted path (``detail.repository-name``) from a decoded payload."""
    *parents, last = path.split(".")
    holder = payload
    for key in parents:
        holder = holder[key]
    del holder[last]


def make_delivery(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    query: Mapping[str, str] | None = None,
    path_secret: str | None = None,
) -> Delivery:
    """A delivery as the HTTP edge hands it to an authenticator."""
    return Delivery(
        headers=Headers(headers or {}), body=body, query=query or {}, path_secret=path_secret
    )


def hex_hmac(body: bytes, secret: str, digestmod: Any = hashlib.sha256) -> str:
    """The lower-case hex HMAC of ``body`` under ``secret``, as senders sign deliveries."""
    return hmac.new(secret.encode(), body, digestmod).hexdigest()


def assert_refused(
    source: Source, delivery: Delivery, endpoint: Endpoint, match: str | None = None
) -> None:
    """Assert that the source's authenticator refuses the delivery (with ``match`` in the error)."""
    with pytest.raises(AuthError, match=match):
        source.authenticate(delivery, endpoint)


def assert_no_secret_refuses_unless_insecure(source: Source, delivery: Delivery) -> None:
    """Assert that an endpoint without a secret refuses the delivery unless marked insecure."""
    assert_refused(
        source, delivery, Endpoint(name=source.name, source=source.name), "no secret configured"
    )
    source.authenticate(delivery, Endpoint(name=source.name, source=source.name, insecure=True))
