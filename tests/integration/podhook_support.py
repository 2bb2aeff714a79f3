"""podhook's own side of the integration tests: a real `podhook worker`, a push handled as the
app handles one, and the job reports the workers leave in the audit trail."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import ManagedProcess
from redis import Redis

from workers import audit
from workers.events import make_event
from workers.hosts import get_hosts
from workers.queueing import JobOptions, QueuedJob
from workers.routing import dispatch_push

PODHOOK = str(Path(sys.executable).parent / "podhook")


def start_worker(
    spawn: Callable[..., ManagedProcess], redis: Redis, host: str, **settings: str
) -> ManagedProcess:
    """`podhook worker` for ``host`` (settle 2 s, restart timeout 60 s), ``settings`` as
    PODHOOK_<NAME> variables; returns once the host has registered."""
    env = {"PODHOOK_HOST_ID": host, "PODHOOK_SETTLE_SECONDS": "2", "PODHOOK_RESTART_TIMEOUT": "60"}
    env |= {f"PODHOOK_{name.upper()}": value for name, value in settings.items()}
    return spawn(
        [PODHOOK, "worker"],
        env=env,
        name=f"worker-{host}",
        ready=lambda: host in get_hosts(redis),
        timeout=60,
    )


def push(redis: Redis, image: Any, options: JobOptions | None = None) -> QueuedJob:
    """What the app does with a registry's push of ``image`` (a harness PushedImage): the job
    of the one host it reaches."""
    registry, _, _ = image.ref.partition("/")
    event = make_event(registry, image.repository, image.tag, image.digest)
    [queued] = dispatch_push(redis, event, options)
    return queued


def outcomes(redis: Redis) -> list[dict[str, Any]]:
    """The job reports in the audit trail, oldest first."""
    return [entry.data for entry in reversed(audit.read(redis, kind="outcome", limit=500))]


def rows_for(redis: Redis, name: str) -> list[dict[str, Any]]:
    """Every report row about container ``name`` in the audit trail, oldest first."""
    return [
        row
        for report in outcomes(redis)
        for row in report.get("containers", [])
        if row.get("container_name") == name
    ]


def reconcile_here(stack: Any, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`podhook reconcile` run directly on this host as ``host``: the stack's Podman socket
    and bus, no Redis, settle 1 s."""
    env = {**stack.env, "PODHOOK_HOST_ID": host, "PODHOOK_SETTLE_SECONDS": "1"}
    env.pop("PODHOOK_REDIS_URL", None)
    return subprocess.run(
        [PODHOOK, "reconcile", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
