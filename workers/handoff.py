"""Self-update: restarting a unit that holds this worker, or the Redis it uses, from outside it.

A job cannot restart the unit it runs in and wait for the result: the stop waits for the job,
the job waits for the restart. So the job pulls as usual, then hands the restart to a
transient systemd unit of its own cgroup (``podhook-handoff-<job>.service``) and ends. That
unit restarts the units, checks that they stay up on the new images for the settle window,
and when they do not, puts the tags back on the old images and restarts them again: it needs
nothing but ``systemctl`` and ``podman``, which a Podman host has, whatever image the worker
runs. The handoff is recorded in Redis; the worker that runs once the transient unit is over
(the new one, or the old one rolled back) reads the facts and completes the job's record.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from redis import Redis

from workers.podman_runtime import Container, Image
from workers.report import ContainerReport, UpdateState
from workers.settings import Settings
from workers.systemd_units import UnitError, UnitManager

HANDOFF_KEY = "podhook:handoff:{host}"
# Seconds the transient unit waits before restarting: the job that handed off ends meanwhile,
# so the worker's warm shutdown has nothing left to wait for.
HANDOFF_DELAY = 2

# Run by the transient unit with the PODHOOK_HANDOFF_* environment below. Exit 0: every unit
# is up on its new image; 2: failed, rollback off; 3: rolled back; 4: the rollback failed.
HANDOFF_SCRIPT = r"""
set -u
units=$PODHOOK_HANDOFF_UNITS
sc="systemctl $PODHOOK_HANDOFF_SCOPE"
pm="podman --url $PODHOOK_HANDOFF_PODMAN_URL"
restarts() { for u in $units; do printf '%s ' "$($sc show -p NRestarts --value "$u")"; done; }
up_on() {  # up_on "name=image ...": every unit active, every container on its image
  for u in $units; do $sc is-active --quiet "$u" || { echo "$u is not active"; return 1; }; done
  for pair in $1; do
    now=$($pm inspect --format '{{.Image}}' "${pair%%=*}" 2>/dev/null)
    [ "$now" = "${pair#*=}" ] || { echo "${pair%%=*} runs ${now:-nothing}"; return 1; }
  done
}
sleep "$PODHOOK_HANDOFF_DELAY"
echo "restarting $units on the new image"
if $sc restart $units; then
  before=$(restarts)
  sleep "$PODHOOK_HANDOFF_SETTLE"
  if [ "$(restarts)" = "$before" ] && up_on "$PODHOOK_HANDOFF_EXPECT"; then
    echo "$units up on the new image"; exit 0
  fi
fi
if [ "$PODHOOK_HANDOFF_ROLLBACK" != 1 ]; then
  echo "failed on the new image; rollback is off"; exit 2
fi
for pair in $PODHOOK_HANDOFF_PREVIOUS; do $pm tag "${pair%%=*}" "${pair#*=}" || exit 4; done
$sc reset-failed $units 2>/dev/null  # a crash loop may have hit the units' start limit
$sc restart $units || exit 4
echo "rolled back $units to the previous images"; exit 3
"""


@dataclass(frozen=True)
class WorkerIdentity:
    """What this worker runs in: units named in the settings or found from its cgroup, its
    own container's id, and the container name its Redis URL points at."""

    units: frozenset[str] = frozenset()
    container_ids: frozenset[str] = frozenset()
    container_names: frozenset[str] = frozenset()

    def holds(self, container: Container) -> bool:
        """Whether restarting ``container``'s unit would stop this worker or its Redis."""
        return (
            container.unit in self.units
            or any(container.id.startswith(own) for own in self.container_ids)
            or container.name in self.container_names
        )


def _own_unit(cgroup_file: Path) -> str | None:
    """The service whose cgroup this process is in (``.../podhook-worker.service``)."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".service"):
                return part
    return None


def _own_container(containerenv: Path, mountinfo: Path) -> str | None:
    """This process's container id, or None outside a container (no ``/run/.containerenv``).

    Podman names the id in ``.containerenv`` for privileged containers only; otherwise it is
    read from the file Podman mounts on the container's ``/etc/hostname``
    (``.../overlay-containers/<id>/userdata/hostname``). Only that mount point counts: a
    host's mount table lists every container's files too.
    """
    try:
        text = containerenv.read_text()
    except OSError:
        return None
    match = re.search(r'^id="([0-9a-f]{64})"$', text, re.MULTILINE)
    if match:
        return match.group(1)
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/etc/hostname":
            match = re.search(r"-containers/([0-9a-f]{64})/userdata/hostname$", fields[3])
            if match:
                return match.group(1)
    return None


def worker_identity(
    settings: Settings,
    cgroup_file: Path = Path("/proc/self/cgroup"),
    containerenv: Path = Path("/run/.containerenv"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> WorkerIdentity:
    """Find what this worker runs in (see WorkerIdentity) from the settings and the system."""
    units = set(settings.self_units)
    own_unit = _own_unit(cgroup_file)
    if own_unit is not None:
        units.add(own_unit)
    own_container = _own_container(containerenv, mountinfo)
    redis_host = urlsplit(settings.redis_url).hostname if settings.redis_url else None
    names = set()
    if redis_host and not re.fullmatch(r"[\d.]+|[0-9a-fA-F:]+|localhost", redis_host):
        names.add(redis_host)  # a container reached by its name on a Podman network
    return WorkerIdentity(
        frozenset(units),
        frozenset({own_container} if own_container else ()),
        frozenset(names),
    )


@dataclass
class Handoff:
    """A restart handed to a transient unit: what it restarts and what it should end on."""

    job: str
    host: str
    transient_unit: str
    units: list[str]
    # One per container: name, id, unit, image (its reference), policy, old and new image ids.
    containers: list[dict[str, Any]]
    rollback: bool
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        """The record kept in Redis."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Handoff:
        """A record read back from Redis."""
        return cls(**json.loads(text))


def handoff_environment(handoff: Handoff, settings: Settings, podman_url: str) -> dict[str, str]:
    """The transient unit's PODHOOK_HANDOFF_* environment for HANDOFF_SCRIPT."""
    return {
        "PODHOOK_HANDOFF_UNITS": " ".join(handoff.units),
        "PODHOOK_HANDOFF_SCOPE": "--user" if settings.systemd_bus == "user" else "",
        "PODHOOK_HANDOFF_PODMAN_URL": podman_url,
        "PODHOOK_HANDOFF_EXPECT": " ".join(f"{c['name']}={c['new']}" for c in handoff.containers),
        "PODHOOK_HANDOFF_PREVIOUS": " ".join(
            sorted({f"{c['old']}={c['image']}" for c in handoff.containers})
        ),
        "PODHOOK_HANDOFF_SETTLE": str(settings.settle_seconds),
        "PODHOOK_HANDOFF_ROLLBACK": "1" if handoff.rollback else "0",
        "PODHOOK_HANDOFF_DELAY": str(HANDOFF_DELAY),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    }


class TransientUnitHandoff:
    """Hands restarts that would stop this worker to a transient unit, recording each in Redis
    (when there is one) for the worker that comes back to complete."""

    def __init__(
        self,
        units: UnitManager,
        settings: Settings,
        identity: WorkerIdentity,
        redis: Redis | None,
        host: str,
        job_id: str,
    ) -> None:
        self.units = units
        self.settings = settings
        self.identity = identity
        self.redis = redis
        self.host = host
        self.job_id = job_id

    def holds(self, container: Container) -> bool:
        """Whether restarting the container's unit would stop this worker or its Redis."""
        return self.identity.holds(container)

    def hand_off(self, changed: list[tuple[Container, Image]], rollback: bool) -> str:
        """Record the handoff, then start the transient unit that restarts the units of
        ``changed`` on their new images; return its name. Raises UnitError (nothing was
        restarted then, and the record is removed)."""
        transient = f"podhook-handoff-{re.sub(r'[^A-Za-z0-9_-]', '-', self.job_id)[-40:]}.service"
        handoff = Handoff(
            job=self.job_id,
            host=self.host,
            transient_unit=transient,
            units=sorted({c.unit for c, _ in changed if c.unit}),
            containers=[
                {
                    "name": c.name,
                    "id": c.id,
                    "unit": c.unit,
                    "image": c.image_reference,
                    "policy": c.policy,
                    "old": c.image_id,
                    "new": image.id,
                }
                for c, image in changed
            ],
            rollback=rollback,
        )
        key = HANDOFF_KEY.format(host=self.host)
        if self.redis is not None:
            self.redis.hset(key, self.job_id, handoff.to_json())
        timeout = HANDOFF_DELAY + 2 * (self.settings.restart_timeout + self.settings.settle_seconds)
        try:
            self.units.start_transient(
                transient,
                ["/bin/sh", "-c", HANDOFF_SCRIPT, "podhook-handoff"],
                handoff_environment(handoff, self.settings, self.settings.podman_url),
                timeout + 30,
            )
        except UnitError:
            if self.redis is not None:
                self.redis.hdel(key, self.job_id)
            raise
        return transient


def pending_handoffs(redis: Redis, host: str) -> list[Handoff]:
    """The handoffs of ``host`` whose job record is not complete yet."""
    return [Handoff.from_json(v) for v in redis.hgetall(HANDOFF_KEY.format(host=host)).values()]


def claim_handoff(redis: Redis, handoff: Handoff) -> bool:
    """Take ``handoff`` off the pending ones; True for the one process that did."""
    return bool(redis.hdel(HANDOFF_KEY.format(host=handoff.host), handoff.job))


def handoff_rows(
    handoff: Handoff, running: Mapping[str, str], transient_failed: bool
) -> list[ContainerReport]:
    """The rows of a finished handoff, from what the containers run now (image id by name)."""
    rows = []
    for c in handoff.containers:
        now = running.get(c["name"])
        via = f"restarted by {handoff.transient_unit}"
        if now == c["new"] and not transient_failed:
            state, reason = UpdateState.UPDATED, f"{via} on the new image"
        elif now == c["old"] and handoff.rollback:
            state = UpdateState.ROLLED_BACK
            reason = f"{c['unit']} did not stay up on the new image ({via}); rolled back"
        else:
            shown = now[:12] if now else "no running container"
            state = UpdateState.FAILED
            reason = (
                f"{c['unit']} did not stay up on the new image ({via}): container "
                f"{c['name']!r} runs {shown}"
                + ("" if handoff.rollback else "; rollback is off")
                + f"; the journal of {handoff.transient_unit} says why"
            )
        rows.append(
            ContainerReport(
                container_id=c["id"],
                container_name=c["name"],
                unit=c["unit"],
                image=c["image"],
                policy=c["policy"],
                state=state,
                reason=reason,
                old_image=c["old"],
                new_image=c["new"],
                timings={"finished": round(time.time() - handoff.started_at, 3)},
            )
        )
    return rows
