"""Settings: ``PODHOOK_*`` environment variables over an optional TOML file over defaults."""

from __future__ import annotations

import math
import os
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from workers.report import UpdateState
from workers.rollout_policy import PolicyError, RolloutPolicy, parse_policies

NOTIFY_STATES = frozenset(state.value for state in UpdateState)


class SettingsError(ValueError):
    """Raised for a setting that cannot be read; the message names the variable or key.

    ``setting`` is the field the message names, when it names one, so that ``load_settings``
    can add the variable or file key the value came from.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class Bounds:
    """The range a numeric setting must lie in, said the way its error message says it."""

    low: int
    high: int
    unit: str = "seconds"
    # restart_timeout: any positive wait, however short, but never none at all.
    above_low: bool = False
    # reconcile_interval: 0 means "never", not "all the time".
    low_means: str = ""

    def admits(self, value: float) -> bool:
        """Whether ``value`` (a finite number) lies in the range."""
        above = value > self.low if self.above_low else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.above_low:
            return f"more than {self.low} and at most {self.high}{unit}"
        low = f"{self.low} ({self.low_means})" if self.low_means else str(self.low)
        return f"between {low} and {self.high}{unit}"


# Every numeric field of Settings has its range here; a test checks that none is missing.
BOUNDS: Mapping[str, Bounds] = {
    "max_body_bytes": Bounds(1024, 64 * 1024 * 1024, "bytes"),
    "max_delivery_events": Bounds(1, 10_000, "events"),
    "restart_timeout": Bounds(0, 3600, above_low=True),
    "settle_seconds": Bounds(0, 600),
    "job_retries": Bounds(0, 20, "retries"),
    "job_timeout": Bounds(60, 24 * 3600),
    "result_ttl": Bounds(60, 365 * 24 * 3600),
    "audit_retention": Bounds(60, 365 * 24 * 3600),
    "web_workers": Bounds(1, 64, "processes"),
    "reconcile_interval": Bounds(0, 7 * 24 * 3600, low_means="off"),
    # Workers beat about every 45 s: under 60 s a host that is working would show stale.
    "host_stale_after": Bounds(60, 24 * 3600),
    "inventory_max_age": Bounds(30, 24 * 3600),
    "redis_wait_replicas": Bounds(0, 100, "replicas", low_means="no WAIT"),
    # WAIT's timeout: a delivery waits this long for replicas before it gets its 503.
    "redis_wait_timeout": Bounds(0, 10, above_low=True),
    # Failed admin-token attempts per client address and window (docs/operations.md, Access).
    "login_limit": Bounds(1, 10_000, "attempts"),
    "admin_token_limit": Bounds(1, 10_000, "attempts"),
    "auth_limit_window": Bounds(1, 24 * 3600),
    "session_lifetime": Bounds(60, 7 * 24 * 3600),
    # Added to the wall clock wherever an update waits for a time (windows, image age, soak).
    "clock_offset": Bounds(-10 * 365 * 24 * 3600, 10 * 365 * 24 * 3600),
}


def _default_podman_url() -> str:
    if os.geteuid() == 0:
        return "unix:///run/podman/podman.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.geteuid()}")
    return f"unix://{runtime_dir}/podman/podman.sock"


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/podhook"
    base = os.environ.get("XDG_STATE_HOME", str(Path.home() / ".local" / "state"))
    return str(Path(base) / "podhook")


@dataclass(frozen=True)
class Settings:
    """Everything podhook reads from its environment and settings file.

    Build with ``load_settings()``; a field's environment variable is ``PODHOOK_`` plus its
    name in capitals, and its TOML key is its name.
    """

    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    webhook_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    insecure: bool = False
    podman_url: str = field(default_factory=_default_podman_url)
    systemd_bus: str = field(default_factory=lambda: "system" if os.geteuid() == 0 else "user")
    host_id: str = field(default_factory=socket.gethostname)
    dry_run: bool = False
    rollback: bool = True
    # Units whose restart would stop this worker or the Redis it uses, besides those found by
    # themselves (the worker's own container, a container named like the Redis URL's host):
    # their restarts are handed to a transient unit.
    self_units: list[str] = field(default_factory=list)
    authfile: str | None = None
    registry_aliases: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 1024 * 1024
    # A delivery with more events is refused whole (413), before any is queued: queuing them
    # all would outlast the sender's timeout (Harbor's is 3 s) and be cut half done.
    max_delivery_events: int = 100
    restart_timeout: float = 120.0
    settle_seconds: float = 5.0
    job_retries: int = 3
    job_timeout: int = 1800
    result_ttl: int = 7 * 24 * 3600
    audit_retention: int = 7 * 24 * 3600
    # Seconds between the periodic reconciles of every worker host (each labeled container
    # compared with its registry, as `podman auto-update` does); 0 turns them off.
    reconcile_interval: int = 3600
    # A host whose workers' last heartbeat is older is shown stale and gets no new jobs.
    host_stale_after: int = 150
    # A host's published container inventory older than this is unknown: pushes reach it.
    inventory_max_age: int = 120
    bind: str = "0.0.0.0:8080"
    web_workers: int = 2
    state_dir: str = field(default_factory=_default_state_dir)
    endpoints: dict[str, Any] = field(default_factory=dict, repr=False)
    log_format: str = "text"
    # Apprise URLs carry their services' tokens: never shown.
    notify_urls: list[str] = field(default_factory=list, repr=False)
    notify_on: frozenset[str] = frozenset({"failed", "rolled_back"})
    # Redis Sentinel (docs/ha.md): host:port of each sentinel; they name the primary of
    # redis_master_name, and redis_url then gives only the user, password and database.
    redis_sentinels: list[str] = field(default_factory=list)
    redis_master_name: str = "podhook"
    redis_sentinel_password: str | None = field(default=None, repr=False)
    # Replicas that must hold a delivery's jobs before it is answered 2xx (WAIT); 0: no WAIT.
    redis_wait_replicas: int = 0
    redis_wait_timeout: float = 1.0
    # Wrong admin tokens an address may try in auth_limit_window seconds, on the status page's
    # login and on the admin API (a missing token counts there); then 429 until the window ends.
    login_limit: int = 10
    admin_token_limit: int = 20
    auth_limit_window: int = 300
    # Seconds a status page session lasts from its login, whatever is done with it meanwhile.
    session_lifetime: int = 8 * 3600
    # Mark the session cookie Secure even on plain HTTP (TLS ended at a reverse proxy); it is
    # Secure anyway when the request came over TLS.
    secure_cookies: bool = False
    # This host's labels (ring=canary,site=fra): rollouts pick their waves' hosts by them.
    host_labels: dict[str, str] = field(default_factory=dict)
    # Rollout policies ([[rollouts]] tables, docs/rollouts.md): the first whose match fits a
    # reference and that has several waves rolls its pushes out wave by wave.
    rollouts: tuple[RolloutPolicy, ...] = ()
    # Seconds added to the wall clock for maintenance windows, image ages and soak times: for
    # drills and tests that move time without waiting for it.
    clock_offset: float = 0.0
    # Where the status page is reached from outside (https://podhook.example); notifications
    # link to it.
    status_url: str | None = None

    def __post_init__(self) -> None:
        if self.systemd_bus not in ("system", "user"):
            raise SettingsError(f"systemd_bus must be 'system' or 'user', not {self.systemd_bus!r}")
        if not self.host_id or any(c in self.host_id for c in " /:"):
            raise SettingsError(f"host_id {self.host_id!r} must be a word without ' ', '/', ':'")
        # Overrides (tests, the CLI) may hand in a string or any iterable of strings.
        object.__setattr__(self, "notify_urls", _parse_list("notify_urls", self.notify_urls))
        object.__setattr__(self, "self_units", _parse_list("self_units", self.self_units))
        object.__setattr__(self, "notify_on", frozenset(_parse_list("notify_on", self.notify_on)))
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"log_format must be 'text' or 'json', not {self.log_format!r}")
        unknown = sorted(set(self.notify_on) - NOTIFY_STATES)
        if unknown:
            raise SettingsError(
                f"notify_on: unknown state(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(NOTIFY_STATES))}"
            )
        if self.notify_urls:
            check_notify_urls(self.notify_urls)
        if not all(isinstance(policy, RolloutPolicy) for policy in self.rollouts):
            try:
                object.__setattr__(self, "rollouts", parse_policies(self.rollouts))
            except PolicyError as error:
                raise SettingsError(str(error), setting="rollouts") from None
        self._check_numbers()
        self._check_redis()

    def _check_numbers(self) -> None:
        """Raise SettingsError naming the first numeric field outside its bounds."""
        for spec in fields(self):
            if str(spec.type) in ("int", "float"):
                whole = str(spec.type) == "int"
                _check_number(spec.name, getattr(self, spec.name), BOUNDS[spec.name], whole)
        # A job that cannot outlast one restart and its settle window fails every update,
        # and its unit lock (which lives as long as the job) expires while it runs.
        if self.job_timeout <= self.restart_timeout + self.settle_seconds:
            raise SettingsError(
                f"job_timeout must be more than restart_timeout + settle_seconds "
                f"({self.restart_timeout:g} + {self.settle_seconds:g} seconds), "
                f"not {self.job_timeout!r}",
                setting="job_timeout",
            )

    def _check_redis(self) -> None:
        """Raise SettingsError naming the Redis or Sentinel setting that cannot be used."""
        sentinels = _parse_list("redis_sentinels", self.redis_sentinels)
        object.__setattr__(self, "redis_sentinels", sentinels)
        for address in sentinels:
            split_address("redis_sentinels", address)
        if not self.redis_master_name or any(c.isspace() for c in self.redis_master_name):
            raise SettingsError(
                f"redis_master_name must be a word, not {self.redis_master_name!r}",
                setting="redis_master_name",
            )
        if not sentinels:
            if self.redis_sentinel_password:
                raise SettingsError(
                    "redis_sentinel_password is set but redis_sentinels is empty",
                    setting="redis_sentinel_password",
                )
            return
        # The sentinels name the primary: a host in the URL would be silently ignored.
        if self.redis_url and urlsplit(self.redis_url).hostname:
            raise SettingsError(
                "redis_url must not name a host when redis_sentinels is set (the sentinels name "
                "the primary); give only the user, password and database, as in "
                f"redis://:password@/0, not {redact_url(self.redis_url)!r}",
                setting="redis_url",
            )
        if self.redis_url and urlsplit(self.redis_url).scheme not in ("redis", "rediss"):
            raise SettingsError(
                "redis_url must be redis:// or rediss:// when redis_sentinels is set, not "
                f"{redact_url(self.redis_url)!r}",
                setting="redis_url",
            )


def split_address(name: str, address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a pair; raises SettingsError naming ``name``."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(
            f"{name}: expected host:port (a port from 1 to 65535), not {address!r}", setting=name
        )
    return host, int(port)


def check_notify_urls(urls: Iterable[str]) -> None:
    """Raise SettingsError naming the position (never the URL) of a URL apprise cannot use."""
    # apprise takes a while to load: only when notifications are configured.
    from workers.apprise_client import is_usable  # noqa: PLC0415

    for position, url in enumerate(urls, start=1):
        if not is_usable(url):
            scheme = url.partition("://")[0] if "://" in url else ""
            raise SettingsError(
                f"notify_urls: entry {position} (scheme {scheme!r}) is not a URL apprise can "
                "send to; see https://github.com/caronc/apprise/wiki"
            )


def _check_number(name: str, value: object, bounds: Bounds, whole: bool) -> None:
    # bool is an int to Python, but `job_retries = true` is a mistake, not 1.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (whole and isinstance(value, float))
    ):
        number = "a whole number" if whole else "a number"
        raise SettingsError(f"{name} must be {number} {bounds}, not {value!r}", setting=name)
    if not math.isfinite(value) or not bounds.admits(value):
        raise SettingsError(f"{name} must be {bounds}, not {value!r}", setting=name)


def redact_url(url: str | None) -> str:
    """A URL fit for logs: any password in it replaced by ``***``."""
    if not url:
        return "(not set)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(name: str, raw: Any, kind: Any) -> Any:
    kind = str(kind)
    if "bool" in kind:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(f"{name}: expected true or false, got {raw!r}")
    if kind == "int":
        # TOML may hold `true` or `1.5`: neither is a count, and int() would take both.
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise SettingsError(f"{name}: expected a whole number, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if kind == "float":
        if isinstance(raw, bool):
            raise SettingsError(f"{name}: expected a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if kind.startswith("tuple[RolloutPolicy"):
        try:
            return parse_policies(raw)
        except PolicyError as error:
            raise SettingsError(f"{name}: {error}") from None
    if kind.startswith("dict"):
        if isinstance(raw, Mapping):
            return dict(raw)
        return _parse_pairs(name, str(raw))
    if kind.startswith(("list", "frozenset", "set")):
        items = _parse_list(name, raw)
        return items if kind.startswith("list") else frozenset(items)
    return None if raw is None else str(raw)


def _parse_pairs(name: str, text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(f"{name}: expected name=value pairs separated by commas")
        pairs[key.strip()] = value.strip()
    return pairs


def _parse_list(name: str, raw: Any) -> list[str]:
    """A TOML array of strings, or one string of items separated by commas or whitespace."""
    if isinstance(raw, str):
        return raw.replace(",", " ").split()
    if isinstance(raw, list | tuple | set | frozenset) and all(isinstance(i, str) for i in raw):
        return [item.strip() for item in raw if item.strip()]
    raise SettingsError(f"{name}: expected a list of strings")


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``), the TOML file named by
    ``PODHOOK_CONFIG`` if any, and ``overrides`` (highest precedence, for tests and the CLI).

    Raises SettingsError naming the variable or key that is wrong; a value out of its bounds
    is named by its field and by the variable or key that gave it.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # field -> the variable or file key that set it
    config_path = env.get("PODHOOK_CONFIG")
    known = {f.name: f for f in fields(Settings)}
    if config_path:
        try:
            with open(config_path, "rb") as handle:
                table = tomllib.load(handle)
        except OSError as error:
            raise SettingsError(f"PODHOOK_CONFIG: cannot read {config_path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"PODHOOK_CONFIG: {config_path} is not TOML: {error}") from None
        for key, raw in table.items():
            if key not in known:
                raise SettingsError(f"{config_path}: unknown setting {key!r}")
            values[key] = _convert(f"{config_path}: {key}", raw, known[key].type)
            origins[key] = f"{config_path}: {key}"
    for name, spec in known.items():
        variable = f"PODHOOK_{name.upper()}"
        if variable in env and name != "endpoints":
            values[name] = _convert(variable, env[variable], spec.type)
            origins[name] = variable
    for key, raw in (overrides or {}).items():
        values[key] = raw
        origins.pop(key, None)
    try:
        return Settings(**values)
    except SettingsError as error:
        origin = origins.get(error.setting or "")
        if origin is None:
            raise
        raise SettingsError(f"{error} (from {origin})", setting=error.setting) from None
