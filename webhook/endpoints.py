"""Configured webhook endpoints: which source a URL serves, with its secret and registry host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.reference import InvalidReferenceError, normalize_registry, parse_reference


class EndpointConfigError(ValueError):
    """Raised at start-up for an endpoint table that cannot work."""


@dataclass(frozen=True)
class Endpoint:
    """One webhook URL, ``/v1/webhooks/<name>``, serving deliveries of one source.

    ``secret`` is the token, shared key or URL secret the source authenticates with; ``None``
    means no secret is configured, and deliveries are refused unless ``insecure`` is set.
    ``header`` names the header that carries the secret for header-token sources.
    ``registry`` is the host for sources whose payloads name none, or an override.
    """

    name: str
    source: str
    secret: str | None = None
    registry: str | None = None
    header: str | None = None
    insecure: bool = False

    def __repr__(self) -> str:  # never print the secret
        return (
            f"Endpoint(name={self.name!r}, source={self.source!r}, "
            f"secret={'<set>' if self.secret else None}, registry={self.registry!r}, "
            f"header={self.header!r}, insecure={self.insecure!r})"
        )


@dataclass(frozen=True)
class Delivery:
    """What the HTTP edge hands to an authenticator: headers, raw body and URL secrets."""

    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str]
    path_secret: str | None = None


_KEYS = {"source", "secret", "registry", "header", "insecure"}


def _is_registry_host(text: str) -> bool:
    try:
        ref = parse_reference(f"{text}/probe:tag")
    except InvalidReferenceError:
        return False
    return ref.fully_qualified and ref.registry == normalize_registry(text)


def build_endpoints(
    table: Mapping[str, Any],
    *,
    source_names: list[str],
    default_secret: str | None,
    insecure: bool,
    needs_registry: set[str],
) -> dict[str, Endpoint]:
    """Build the endpoint map from the ``[endpoints.<name>]`` tables of the settings file.

    Every source is also served at an endpoint of its own name with ``default_secret``, unless
    the table defines that name; sources that need a configured registry host get no default
    endpoint. Raises EndpointConfigError naming the endpoint and the problem.
    """
    endpoints: dict[str, Endpoint] = {
        name: Endpoint(name=name, source=name, secret=default_secret, insecure=insecure)
        for name in source_names
        if name not in needs_registry
    }
    for name, raw in table.items():
        if not isinstance(raw, Mapping):
            raise EndpointConfigError(f"endpoint {name!r}: expected a table")
        unknown = set(raw) - _KEYS
        if unknown:
            raise EndpointConfigError(f"endpoint {name!r}: unknown keys {sorted(unknown)}")
        source = raw.get("source", name)
        if source not in source_names:
            raise EndpointConfigError(
                f"endpoint {name!r}: unknown source {source!r} (known: {', '.join(source_names)})"
            )
        for key in ("secret", "registry", "header"):
            if key in raw and not (isinstance(raw[key], str) and raw[key]):
                raise EndpointConfigError(f"endpoint {name!r}: {key} must be a non-empty string")
        if "insecure" in raw and not isinstance(raw["insecure"], bool):
            raise EndpointConfigError(f"endpoint {name!r}: insecure must be true or false")
        registry = raw.get("registry")
        if registry is not None and not _is_registry_host(registry):
            raise EndpointConfigError(
                f"endpoint {name!r}: registry {registry!r} is not a host[:port] "
                "(no scheme, no path)"
            )
        if source in needs_registry and not registry:
            raise EndpointConfigError(
                f"endpoint {name!r}: source {source!r} payloads name no registry host; "
                'set registry = "host[:port]"'
            )
        endpoints[name] = Endpoint(
            name=name,
            source=source,
            secret=raw.get("secret", default_secret),
            registry=registry,
            header=raw.get("header"),
            insecure=raw.get("insecure", insecure),
        )
    return endpoints
