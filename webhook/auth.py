"""Authenticators for webhook deliveries: tokens, header secrets, URL secrets and HMAC signatures.

Every comparison of a secret uses ``hmac.compare_digest``. An endpoint without a secret refuses
every delivery unless it is explicitly marked insecure.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from webhook.endpoints import Delivery, Endpoint


class AuthError(Exception):
    """Raised when a delivery is not authenticated; the message is safe to return to the sender."""


Authenticator = Callable[[Delivery, Endpoint], None]


def _secret_of(endpoint: Endpoint) -> str | None:
    """The endpoint's secret; None when it may be skipped. Raises AuthError when it is missing."""
    if endpoint.secret:
        return endpoint.secret
    if endpoint.insecure:
        return None
    raise AuthError(f"endpoint {endpoint.name!r} has no secret configured; refusing deliveries")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def header_token(default_header: str = "Authorization") -> Authenticator:
    """Authenticate by a secret in a header: ``Bearer <secret>`` or the secret alone.

    The endpoint's ``header`` setting overrides ``default_header``.
    """

    def authenticate(delivery: Delivery, endpoint: Endpoint) -> None:
        secret = _secret_of(endpoint)
        if secret is None:
            return
        header = endpoint.header or default_header
        value = delivery.headers.get(header, "")
        if not value:
            raise AuthError(f"missing {header} header")
        token = value[7:].strip() if value[:7].lower() == "bearer " else value.strip()
        if not _same(token, secret):
            raise AuthError(f"wrong token in {header} header")

    return authenticate


bearer_token = header_token("Authorization")


def url_secret(delivery: Delivery, endpoint: Endpoint) -> None:
    """Authenticate by a secret in the URL: ``/v1/webhooks/<endpoint>/<secret>`` or ``?token=``.

    For senders that cannot set headers or sign bodies (Docker Hub, Quay, Pub/Sub push).
    """
    secret = _secret_of(endpoint)
    if secret is None:
        return
    given = delivery.path_secret or delivery.query.get("token", "")
    if not given:
        raise AuthError("missing secret in the URL (/v1/webhooks/<endpoint>/<secret> or ?token=)")
    if not _same(given, secret):
        raise AuthError("wrong secret in the URL")


def hmac_signature(
    headers: Iterable[tuple[str, str]],
    digestmod: str = "sha256",
    *,
    signed: Callable[[Delivery], bytes] | None = None,
) -> Authenticator:
    """Authenticate by an HMAC under the secret of the raw body, or of what ``signed`` returns.

    ``headers`` lists ``(header name, prefix)`` pairs to look for, in order, such as
    ``("X-Hub-Signature-256", "sha256=")``; the first header present must hold the prefix and
    the lower-case hex digest. ``signed`` picks the signed bytes out of a delivery for senders
    that sign something other than the body they post; a ValueError from it refuses the
    delivery.
    """
    candidates = list(headers)

    def authenticate(delivery: Delivery, endpoint: Endpoint) -> None:
        secret = _secret_of(endpoint)
        if secret is None:
            return
        try:
            message = delivery.body if signed is None else signed(delivery)
        except ValueError as error:
            raise AuthError(f"cannot read the signed payload: {error}") from None
        for name, prefix in candidates:
            value = delivery.headers.get(name)
            if value is None:
                continue
            expected = prefix + hmac.new(secret.encode(), message, digestmod).hexdigest()
            if not _same(value.strip().lower(), expected):
                raise AuthError(f"{name} signature does not match the body")
            return
        raise AuthError(f"missing signature header ({', '.join(n for n, _ in candidates)})")

    return authenticate


def any_of(*authenticators: Authenticator) -> Authenticator:
    """Accept a delivery that any one of the authenticators accepts.

    For senders that can be set up either way (a header, or a secret in the URL). The error of
    the last authenticator is raised when none accepts.
    """

    def authenticate(delivery: Delivery, endpoint: Endpoint) -> None:
        error = AuthError("no authenticator configured")
        for candidate in authenticators:
            try:
                candidate(delivery, endpoint)
                return
            except AuthError as refused:
                error = refused
        raise error

    return authenticate
