"""Rollout policies: which references roll out across the fleet in waves, the waves (ordered
host label selectors), the soak time between them and what a failure does.

Read from the settings file (``[[rollouts]]`` tables, docs/rollouts.md). Pure: no Redis here.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A failure in a wave halts the rollout; the hosts already updated keep the new image.
ON_FAILURE = ("halt",)


class PolicyError(ValueError):
    """Raised for a rollout policy that cannot be used; the message names the entry and key."""


@dataclass(frozen=True)
class Wave:
    """One step of a rollout: the hosts whose labels match ``selector`` (every pair must
    match; an empty selector matches every host)."""

    name: str
    selector: tuple[tuple[str, str], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a host with ``labels`` belongs to this wave."""
        return all(labels.get(key) == value for key, value in self.selector)

    def describe(self) -> str:
        """The selector as written: ``ring=canary,site=fra``, or ``*`` for every host."""
        return ",".join(f"{k}={v}" for k, v in self.selector) or "*"


@dataclass(frozen=True)
class RolloutPolicy:
    """How pushes of the references matching ``match`` (a shell pattern over
    ``registry/repository:tag``) reach the fleet: ``waves`` in order, each held for ``soak``
    seconds once all its hosts are updated and healthy before the next starts."""

    match: str
    waves: tuple[Wave, ...]
    soak: float = 0.0
    on_failure: str = "halt"

    def applies_to(self, reference: str) -> bool:
        """Whether a push of ``reference`` rolls out under this policy."""
        return fnmatch.fnmatchcase(reference, self.match)

    def assign(self, hosts: Mapping[str, Mapping[str, str]]) -> list[list[str]]:
        """The hosts of each wave, sorted: each host (name -> labels) goes to the first wave
        whose selector it matches, and a host that matches none to the last wave (a host
        is never left out of a rollout for lack of a label)."""
        waves: list[list[str]] = [[] for _ in self.waves]
        for host in sorted(hosts):
            index = next(
                (i for i, wave in enumerate(self.waves) if wave.matches(hosts[host])),
                len(self.waves) - 1,
            )
            waves[index].append(host)
        return waves


def parse_selector(text: str, where: str = "selector") -> tuple[tuple[str, str], ...]:
    """``ring=canary,site=fra`` as sorted pairs; ``*`` or empty for every host. Raises
    PolicyError naming ``where``."""
    text = text.strip()
    if text in ("", "*"):
        return ()
    pairs = []
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PolicyError(f"{where}: expected label=value pairs separated by commas or '*'")
        pairs.append((key.strip(), value.strip()))
    return tuple(sorted(pairs))


def parse_labels(text: str) -> dict[str, str]:
    """Host labels as written in PODHOOK_HOST_LABELS (``ring=canary,site=fra``)."""
    return dict(parse_selector(text, "host_labels"))


def parse_policies(raw: Any) -> tuple[RolloutPolicy, ...]:
    """The ``rollouts`` setting: a list of tables (TOML ``[[rollouts]]``) or its JSON text
    (the PODHOOK_ROLLOUTS variable). Each table has ``match`` (default ``*``), ``waves`` (a
    list of ``{name, hosts}`` tables, at least one), ``soak`` (seconds, default 0) and
    ``on_failure`` (``halt``). Raises PolicyError naming the entry and the key at fault.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError as error:
            raise PolicyError(f"rollouts: not JSON: {error}") from None
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise PolicyError("rollouts: expected a list of tables ([[rollouts]] in TOML)")
    return tuple(_parse_policy(position, table) for position, table in enumerate(raw, start=1))


def _parse_policy(position: int, table: Any) -> RolloutPolicy:
    where = f"rollouts entry {position}"
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where}: expected a table")
    unknown = sorted(set(table) - {"match", "waves", "soak", "on_failure"})
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}")
    match = table.get("match", "*")
    if not isinstance(match, str) or not match:
        raise PolicyError(f"{where}: match must be a pattern such as 'registry.example/app:*'")
    waves_raw = table.get("waves")
    if not isinstance(waves_raw, Sequence) or isinstance(waves_raw, str) or not waves_raw:
        raise PolicyError(f"{where}: waves must be a list of {{name, hosts}} tables, at least one")
    waves = []
    for number, wave in enumerate(waves_raw, start=1):
        at = f"{where}, wave {number}"
        if not isinstance(wave, Mapping) or set(wave) - {"name", "hosts"}:
            raise PolicyError(f"{at}: expected a table with name and hosts")
        name = wave.get("name", f"wave-{number}")
        hosts = wave.get("hosts", "*")
        if not isinstance(name, str) or not name.strip() or not isinstance(hosts, str):
            raise PolicyError(f"{at}: name and hosts must be strings")
        waves.append(Wave(name.strip(), parse_selector(hosts, f"{at}: hosts")))
    if len({w.name for w in waves}) != len(waves):
        raise PolicyError(f"{where}: wave names must differ")
    soak = table.get("soak", 0)
    if isinstance(soak, bool) or not isinstance(soak, int | float) or not 0 <= soak <= 7 * 86400:
        raise PolicyError(f"{where}: soak must be a number of seconds between 0 and 604800")
    on_failure = table.get("on_failure", "halt")
    if on_failure not in ON_FAILURE:
        raise PolicyError(f"{where}: on_failure must be one of {', '.join(ON_FAILURE)}")
    return RolloutPolicy(match, tuple(waves), float(soak), on_failure)


def policy_for(policies: Sequence[RolloutPolicy], reference: str) -> RolloutPolicy | None:
    """The first policy that applies to ``reference`` and has more than one wave (one wave is
    every host at once: no rollout), or None."""
    for policy in policies:
        if policy.applies_to(reference):
            return policy if len(policy.waves) > 1 else None
    return None
