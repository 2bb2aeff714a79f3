"""Limits on wrong admin tokens per client address, counted in Redis so that every gunicorn
worker (and every web host) shares them.

An address gets ``limit`` failed attempts within ``window`` seconds of its first one; after
that every attempt from it is refused until the window ends, the right token too: answering
the right token while refusing wrong ones would tell a guesser which guess was right. An
attempt with the right token is never counted. A Redis that does not answer lets every attempt
through (the token is still checked): a limiter must not lock the admin out.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass
from typing import Any

from flask import current_app
from redis.exceptions import RedisError

log = logging.getLogger("podhook.webhook")

KEY_PREFIX = "podhook:auth-failures"

# Refuses while the counter is at its limit, counting each refusal so that only the first of a
# window is logged. Read and count in one step: a counter that expires between two commands
# would otherwise be recreated without an expiry.
_REFUSE = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count < tonumber(ARGV[1]) then return {0, 0} end
local refused = redis.call('INCR', KEYS[1]) - tonumber(ARGV[1])
return {refused, redis.call('PTTL', KEYS[1])}
"""

# The attempts each kind counts, and the setting that limits them.
KINDS = {
    "login": ("status page logins", "login_limit"),
    "admin-token": ("admin API requests with a wrong or missing token", "admin_token_limit"),
}


def client_key(address: str | None) -> str:
    """What an address's attempts are counted under: an IPv4 address as it is, the /64 of an
    IPv6 one (a single host is usually given a whole /64, RFC 6177), other text as given."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


@dataclass(frozen=True)
class AttemptLimit:
    """At most ``limit`` failed attempts of one ``kind`` per address within ``window`` seconds."""

    kind: str
    limit: int
    window: int

    def _key(self, address: str | None) -> str:
        return f"{KEY_PREFIX}:{self.kind}:{client_key(address)}"

    def seconds_refused(self, redis: Any, address: str | None) -> int:
        """0 while ``address`` may try; otherwise the seconds until it may (for Retry-After).

        The first refusal of a window is logged, naming the address and what was limited.
        Never raises: when Redis does not answer, the attempt is let through and that is logged.
        """
        try:
            refused, ttl = redis.register_script(_REFUSE)(
                keys=[self._key(address)], args=[self.limit]
            )
        except RedisError as error:
            log.warning("%s from %s not limited: Redis: %s", self.what, address, error)
            return 0
        if not refused:
            return 0
        wait = max(1, math.ceil(int(ttl) / 1000)) if int(ttl) > 0 else self.window
        if int(refused) == 1:
            log.warning(
                "%s from %s limited: %d failed within %d s; refused for %d s",
                self.what,
                client_key(address),
                self.limit,
                self.window,
                wait,
            )
        return wait

    def count_failure(self, redis: Any, address: str | None) -> None:
        """Count a failed attempt of ``address``; the first one starts its window.

        Never raises: a count Redis does not take is lost (and logged).
        """
        key = self._key(address)
        try:
            with redis.pipeline(transaction=True) as pipe:
                pipe.set(key, 0, px=self.window * 1000, nx=True)
                pipe.incr(key)
                pipe.execute()
        except RedisError as error:
            log.warning("%s from %s not counted: Redis: %s", self.what, address, error)

    @property
    def what(self) -> str:
        return KINDS[self.kind][0]


def attempt_limit(kind: str) -> AttemptLimit:
    """The app's limit on ``kind`` (``login`` or ``admin-token``) attempts, from its settings."""
    settings = current_app.extensions["podhook"]["settings"]
    return AttemptLimit(kind, getattr(settings, KINDS[kind][1]), settings.auth_limit_window)


def _quick_redis() -> Any:
    # The client that gives up after a quarter of a second: a hung Redis must not hold a
    # login or an API request for longer than the limit is worth.
    return current_app.extensions["podhook"]["metrics_redis"]


def seconds_refused(kind: str, address: str | None) -> int:
    """0 while ``address`` may make an attempt of ``kind``; otherwise the seconds until it may."""
    return attempt_limit(kind).seconds_refused(_quick_redis(), address)


def count_failure(kind: str, address: str | None) -> None:
    """Count a failed attempt of ``kind`` by ``address``."""
    attempt_limit(kind).count_failure(_quick_redis(), address)
