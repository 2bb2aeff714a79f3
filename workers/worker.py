"""Run RQ workers for this host's queue: the host agent. It registers the host as it beats,
publishes what the host runs (on a timer and as Podman reports changes), reconciles when it
starts and every ``reconcile_interval`` seconds, and asks for convergence when a container of
a pushed reference starts on another image.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from workers.desired import get_desired, was_rolled_back
from workers.gates import settings_now
from workers.handoff import pending_handoffs
from workers.hosts import register_host
from workers.inventory import collect_inventory, publish_inventory, routed_reference
from workers.jobs import finish_handoffs
from workers.logs import setup_logging
from workers.podman_events import ContainerEvent, follow_container_events
from workers.podman_runtime import ContainerRuntimeError, Image, PodmanRuntime
from workers.queueing import (
    JobOptions,
    get_queue,
    is_work_running,
    reconcile_due,
    redis_from_settings,
    request_convergence,
    request_reconcile,
)
from workers.reference import parse_reference
from workers.rollouts import advance_active
from workers.settings import Settings, load_settings
from workers.wakeups import claim_due, wake_later

log = logging.getLogger("podhook.worker")

# The worker's heartbeat, and so the host's, comes about every WORKER_TTL - 15 seconds.
WORKER_TTL = 60
# Abandoned jobs (a killed worker's) are retried, and a dead scheduler is replaced, this often
# rather than at RQ's ten-minute maintenance.
MAINTENANCE_SECONDS = 60
# How often the heartbeat publishes the inventory when Podman's events did not (seconds).
INVENTORY_REFRESH_SECONDS = 30
# How often a worker looks for waits that are over (windows, image ages, rollout soaks).
WAKE_SECONDS = 2.0


class HostWorker(Worker):
    """An RQ worker whose heartbeat also tells the fleet that its host is alive, publishes its
    inventory and queues the periodic reconcile when it is due."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any):
        # RQ reads dequeue_timeout (below) while it initializes.
        self.settings = settings
        self.host_id = settings.host_id
        self.main_pid = os.getpid()
        self._inventory_refreshed = -math.inf
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        """Wait for jobs no longer than a heartbeat, nor than half the reconcile interval."""
        base = max(1, self.worker_ttl - 15)
        interval = self.settings.reconcile_interval
        return min(base, max(1, interval // 2)) if interval > 0 else base

    def request_stop(self, signum: int, frame: Any) -> None:
        """RQ's warm shutdown, remembered: an idle RQ worker raises StopRequested into whatever
        it is doing, and a heartbeat that asks Podman may be inside code that turns any error
        into a ContainerRuntimeError, which would swallow the stop."""
        self._stop_requested = True
        super().request_stop(signum, frame)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, plus the host's entry in the fleet, its inventory, and the
        periodic reconcile when due. Raises StopRequested when a stop was asked for meanwhile
        and no job is running."""
        super().heartbeat(timeout, pipeline)
        try:
            register_host(self.connection, self.host_id, labels=self.settings.host_labels)
            if not self._stop_requested:
                self.revive_scheduler()
            if self.get_state() != "busy":
                finish_handoffs_now(self.connection, self.settings)
                # Podman's events keep the inventory current; this timer is the backstop. RQ
                # beats before every dequeue: a listing after every job would delay the next.
                if time.monotonic() - self._inventory_refreshed > INVENTORY_REFRESH_SECONDS:
                    refresh_inventory(self.connection, self.settings)
                    self._inventory_refreshed = time.monotonic()
                if reconcile_due(self.connection, self.host_id, self.settings.reconcile_interval):
                    request_reconcile(
                        self.connection, self.host_id, JobOptions.from_settings(self.settings)
                    )
        except (RedisError, ContainerRuntimeError) as error:
            # Redis restarting, Podman stopped: RQ's own loop waits them out; so does this.
            log.warning("heartbeat of host %s: %s", self.host_id, error)
        if self._stop_requested and self.get_state() != "busy" and os.getpid() == self.main_pid:
            raise StopRequested()

    def revive_scheduler(self) -> None:
        """Start this worker's RQ scheduler when no live scheduler holds its queue's lock
        (the one that did died, with Redis restarting say), so delayed jobs and retries run
        on time instead of after RQ's ten-minute fallback."""
        scheduler = self.scheduler
        if scheduler is None or os.getpid() != self.main_pid:
            return  # RQ beats from the work-horse too; the scheduler is the worker's child
        process = scheduler._process  # RQ keeps the scheduler's process there
        if process is None or not process.is_alive():
            scheduler.acquire_locks(auto_start=True)


def finish_handoffs_now(redis: Redis, settings: Settings) -> bool:
    """Complete the handed-off restarts of this host that are over; whether any is pending.

    Never raises: what cannot be completed now is tried again later."""
    try:
        finish_handoffs(settings, redis)
        return bool(pending_handoffs(redis, settings.host_id))
    except Exception as error:  # noqa: BLE001 - Podman, systemd or Redis down: try later
        log.warning("completing handed-off restarts: %s", error)
        return True


def _finish_handoffs_soon(settings: Settings) -> None:
    """Poll until this host's handed-off restarts are complete, within the time they take."""
    redis = redis_from_settings(settings)
    deadline = time.monotonic() + 60 + 2 * (settings.restart_timeout + settings.settle_seconds)
    while finish_handoffs_now(redis, settings) and time.monotonic() < deadline:
        time.sleep(1)


# The digests of the images this process has inspected for the inventory, by image id.
_IMAGES: dict[str, Image] = {}
_MAX_IMAGES = 1000


def refresh_inventory(redis: Redis, settings: Settings) -> dict[str, Any]:
    """Collect this host's labeled containers from Podman, publish them and return them."""
    if len(_IMAGES) > _MAX_IMAGES:
        _IMAGES.clear()
    runtime = PodmanRuntime(settings.podman_url, timeout=10)
    try:
        inventory = collect_inventory(runtime, settings.registry_aliases, _IMAGES)
    finally:
        runtime.close()
    publish_inventory(redis, settings.host_id, inventory)
    return inventory


class InventoryWatcher:
    """Follows Podman's container events in a daemon thread of the worker process: publishes
    the inventory when labeled containers come and go, and when one starts on an image that is
    not what its pushed reference names, asks this host to converge on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_from_settings(settings)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="podman-events", daemon=True)

    def start(self) -> None:
        """Start following events."""
        self.thread.start()

    def close(self) -> None:
        """Stop following events (within a few seconds)."""
        self.stop.set()

    def _run(self) -> None:
        follow_container_events(self.settings.podman_url, self.on_event, self.stop)

    def on_event(self, event: ContainerEvent) -> None:
        """Publish the inventory; converge a started container whose reference was pushed
        to a digest its image does not have."""
        inventory = refresh_inventory(self.redis, self.settings)
        if event.action != "start":
            return
        reference = routed_reference(event.image, self.settings.registry_aliases)
        desired = get_desired(self.redis, reference) if reference else None
        if reference is None or desired is None:
            return
        if is_work_running(self.redis, self.settings.host_id, reference):
            return  # the job converging it restarts its units: their starts are its own
        if was_rolled_back(self.redis, self.settings.host_id, desired):
            return  # this host's units failed on that push: the next push decides
        if desired.digest and self._runs(inventory, event, desired.digest):
            return
        queued = request_convergence(
            self.redis, self.settings.host_id, reference, JobOptions.from_settings(self.settings)
        )
        log.info(
            "container %s started on an image that may not be what %s names: job %s",
            event.name,
            reference,
            queued.job_id,
        )

    def _runs(self, inventory: dict[str, Any], event: ContainerEvent, digest: str) -> bool:
        """Whether the started container, as the inventory just listed it, runs ``digest``."""
        image_ids = [
            c["image_id"] for c in inventory.get("containers", []) if c["id"] == event.container_id
        ]
        if not image_ids:
            return False
        runtime = PodmanRuntime(self.settings.podman_url, timeout=10)
        try:
            image = runtime.get_image(image_ids[0])
        except ContainerRuntimeError:
            return False
        finally:
            runtime.close()
        return image.has_digest(parse_reference(event.image).name, digest)


class Waker:
    """Wakes what waits for a time, in a daemon thread of the worker process, every
    ``WAKE_SECONDS`` by the settings' clock: this host's updates whose maintenance window
    opened, whose image came of age or whose rollout wave's soak ended are asked to converge,
    and the fleet's active rollouts move on. The settings file is read again when it changes,
    so a drill that moves ``clock_offset`` is seen at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_from_settings(settings)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="waker", daemon=True)
        self._config_mtime = self._mtime()

    def start(self) -> None:
        """Start waking."""
        self.thread.start()

    def close(self) -> None:
        """Stop waking (within WAKE_SECONDS)."""
        self.stop.set()

    def _run(self) -> None:
        while not self.stop.wait(WAKE_SECONDS):
            try:
                self.wake()
            except Exception as error:  # noqa: BLE001 - the waker outlives a bad round
                log.warning("waking waiting updates of host %s: %s", self.settings.host_id, error)

    def wake(self) -> list[str]:
        """Ask this host to converge on every reference whose wake-up is due, and move the
        active rollouts on. Returns the references woken."""
        mtime = self._mtime()
        if mtime != self._config_mtime:
            self.settings, self._config_mtime = load_settings(), mtime
        now = settings_now(self.settings)
        woken = claim_due(self.redis, self.settings.host_id, now)
        options = JobOptions.from_settings(self.settings)
        for reference in woken:
            try:
                queued = request_convergence(self.redis, self.settings.host_id, reference, options)
            except RedisError:
                wake_later(self.redis, self.settings.host_id, reference, now)  # next round
                raise
            log.info("the wait of %s is over: job %s", reference, queued.job_id)
        advance_active(self.redis, self.settings, now)
        return woken

    @staticmethod
    def _mtime() -> float | None:
        path = os.environ.get("PODHOOK_CONFIG")
        try:
            return os.stat(path).st_mtime if path else None
        except OSError:
            return None


def preload_job_modules() -> None:
    """Import what a restarting job needs (pydbus and GLib, about 50 ms) once, in the worker:
    the work-horse it forks for each job inherits them. Connections are still made per job."""
    with contextlib.suppress(ImportError):
        import pydbus  # noqa: F401, PLC0415
        from gi.repository import GLib  # noqa: F401, PLC0415


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Work this host's queue until stopped (or, with ``burst``, until it is empty).

    Registers the host and queues a reconcile of every labeled container at the front of its
    queue first: a host that comes back converges before taking new work. Returns whether any
    job was worked. Raises redis.RedisError when Redis is unreachable.
    """
    setup_logging(settings)  # pool workers are fresh (spawned) processes
    preload_job_modules()
    redis = redis_from_settings(settings)
    register_host(redis, settings.host_id, labels=settings.host_labels)
    options = JobOptions.from_settings(settings)
    if pending_handoffs(redis, settings.host_id):
        # This worker may be what a handed-off restart brought back: complete its record.
        threading.Thread(
            target=_finish_handoffs_soon, args=(settings,), name="handoffs", daemon=True
        ).start()
    if settings.reconcile_interval > 0 and not burst:
        reconcile_due(redis, settings.host_id, settings.reconcile_interval)  # times the next
        request_reconcile(redis, settings.host_id, options, at_front=True)
    worker = HostWorker(
        [get_queue(redis, settings.host_id)],
        connection=redis,
        serializer=JSONSerializer,
        settings=settings,
        worker_ttl=WORKER_TTL,
        maintenance_interval=MAINTENANCE_SECONDS,
    )
    watcher = InventoryWatcher(settings) if not burst else None
    waker = Waker(settings) if not burst else None
    for thread in (watcher, waker):
        if thread is not None:
            thread.start()
    log.info("worker for host=%s on queue %s", settings.host_id, worker.queue_names()[0])
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
    finally:
        for thread in (watcher, waker):
            if thread is not None:
                thread.close()


def run_pool(settings: Settings, processes: int, *, burst: bool = False) -> None:
    """Run ``processes`` workers for this host side by side and wait for them all.

    Every worker takes jobs from the same host queue; the per-unit lock keeps two of them from
    restarting one unit at once. SIGTERM is passed on to the workers, which finish their
    current job first (RQ's warm shutdown); Ctrl-C reaches them from the terminal directly.
    """
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=run_worker, args=(settings,), kwargs={"burst": burst})
        for _ in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    # A second SIGINT would turn the workers' warm shutdown into a cold one: the terminal
    # already sends Ctrl-C to every process of the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for child in children:
        child.join()
