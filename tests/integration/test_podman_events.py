"""Podman's event stream, narrowed to auto-update containers, against the real API service.

Run with ``-s`` to see how long each watch took to notice events and to stop.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import PodmanService, Stack, start_podman_service, wait_for

from workers.podman_events import ContainerEvent, follow_container_events, watch_container_events
from workers.podman_runtime import AUTOUPDATE_LABEL, UNIT_LABEL, ContainerRuntimeError

pytestmark = pytest.mark.integration

# podman-py's UDSConnection.connect leaves its socket open when the connection fails
# (podman/api/uds.py): tests that reach a missing socket collect those sockets before they end.
unclosed_podman_sockets = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <podman.api.uds.UDSSocket:pytest.PytestUnraisableExceptionWarning"
)


class Watch:
    """``watch_container_events`` in a thread, collecting what it yields and how it ended."""

    def __init__(self, podman_url: str, **kwargs: Any) -> None:
        self.events: list[ContainerEvent] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(podman_url, kwargs), daemon=True)
        self.thread.start()
        # The watch starts when the generator first runs; give the thread that moment.
        time.sleep(0.2)

    def _run(self, podman_url: str, kwargs: dict[str, Any]) -> None:
        try:
            for event in watch_container_events(podman_url, stop=self.stop, **kwargs):
                self.events.append(event)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def of(self, name: str) -> list[ContainerEvent]:
        return [event for event in self.events if event.name == name]

    def wait(self, name: str, action: str, timeout: float = 30.0) -> None:
        def arrived() -> bool:
            if self.error is not None:
                raise AssertionError(f"the watch failed: {self.error!r}")
            return any(event.action == action for event in self.of(name))

        wait_for(arrived, timeout, f"{action} of {name}")

    def end(self, within: float) -> float:
        """Set ``stop``; return how long the thread took to end (at most ``within``)."""
        started = time.monotonic()
        self.stop.set()
        self.thread.join(within)
        assert not self.thread.is_alive(), f"the watch still runs {within}s after stop"
        return time.monotonic() - started


@pytest.fixture
def image(stack: Stack) -> str:
    """A pushed image, pulled into the runtime storage so that creating from it is quick."""
    pushed = stack.build_and_push("events/app", "1")
    stack.podman("pull", "-q", pushed.ref)
    return pushed.ref


@pytest.fixture
def private_podman(stack: Stack) -> Iterator[Callable[[], PodmanService]]:
    """``start()``: a second Podman API service on the stack's storage, on a socket of its own
    (the same path each call), stopped after the test."""
    socket_path = stack.root / "events-podman.sock"
    started: list[PodmanService] = []

    def start() -> PodmanService:
        socket_path.unlink(missing_ok=True)
        service = start_podman_service(
            socket_path, stack.podman_env, stack.root / "events-podman.log"
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def test_watch_yields_labelled_containers_only(stack: Stack, podman_url: str, image: str) -> None:
    # A one-second read timeout: the stream is reopened several times during the test, and
    # no event may be lost or repeated at a reopening.
    watch = Watch(podman_url, timeout=1.0)
    began = time.time()
    try:
        labelled_id = stack.podman(
            "create", "--name", "ev-labelled", "--label", f"{AUTOUPDATE_LABEL}=registry", image
        ).strip()
        stack.podman("start", "ev-labelled")
        stack.podman("create", "--name", "ev-plain", image)
        stack.podman("start", "ev-plain")
        time.sleep(1.5)  # idle long enough for a reopening between the starts and removals
        stack.podman("rm", "-f", "-t", "0", "ev-plain")
        stack.podman("rm", "-f", "-t", "0", "ev-labelled")
        t = time.monotonic()
        # The stream is in order: once the last removal is in, the rest would be too.
        watch.wait("ev-labelled", "remove")
        lag = time.monotonic() - t
        ended = time.time()
    finally:
        stopped_in = watch.end(within=5.0)
        stack.podman("rm", "-f", "-t", "0", "ev-labelled", "ev-plain", check=False)

    assert watch.error is None
    events = watch.of("ev-labelled")
    assert [event.action for event in events] == ["create", "start", "died", "remove"]
    for event in events:
        assert event.container_id == labelled_id
        assert event.image == image
        assert dict(event.labels) == {AUTOUPDATE_LABEL: "registry"}
        assert began <= event.time <= ended
    assert [event.time for event in events] == sorted(event.time for event in events)
    assert watch.of("ev-plain") == []
    assert stopped_in < 1.0 + 1.5
    print(f"\nremove event after {lag:.2f}s; stopped {stopped_in:.2f}s after stop was set")


def test_watch_keeps_its_place_when_events_log_rotates(
    stack: Stack, podman_url: str, image: str
) -> None:
    # Podman 4.3 rotates events.log (file backend, 1 MB by default) by keeping its newer half,
    # which a stream reopening the file without "since" sends again. Padded with copies of an
    # old labelled container's event (the harness configures the file backend), the first
    # write below rotates it.
    stack.podman(
        "create", "--name", "ev-rotate-old", "--label", f"{AUTOUPDATE_LABEL}=registry", image
    )
    (log_path,) = stack.root.glob("podman/**/events/events.log")
    old_line = next(
        line for line in log_path.read_text().splitlines(True) if "ev-rotate-old" in line
    )
    with log_path.open("a") as log:
        log.write(old_line * (5_000_000 // len(old_line)))
    watch = Watch(podman_url, timeout=2.0)
    names = [f"ev-rotate-{n}" for n in range(4)]
    try:
        for name in names:
            stack.podman("create", "--name", name, "--label", f"{AUTOUPDATE_LABEL}=registry", image)
        watch.wait(names[-1], "create")
        time.sleep(2.5)  # one more reopening: nothing may come twice
    finally:
        watch.end(within=2.0 + 2.0)
        stack.podman("rm", "-f", "ev-rotate-old", *names, check=False)

    assert log_path.stat().st_size < 1_000_000
    assert watch.error is None
    assert [(event.action, event.name) for event in watch.events] == [
        ("create", name) for name in names
    ]


def test_unit_started_again_is_seen_with_its_unit(
    stack: Stack, podman_url: str, image: str, units: Any
) -> None:
    unit = units.container("ev-unit", image)
    watch = Watch(podman_url, actions=("start",), timeout=2.0)
    try:
        stack.systemctl("stop", unit)
        stack.wait_unit(unit, "inactive", 30.0)
        stack.systemctl("start", unit)
        stack.wait_unit(unit, "active", 30.0)
        watch.wait("ev-unit", "start")
        running_id = stack.container_info("ev-unit")["id"]
    finally:
        stopped_in = watch.end(within=2.0 + 2.0)

    assert watch.error is None
    # Only the actions asked for: no died, remove or create of the unit's --new containers.
    assert [(event.action, event.container_id) for event in watch.events] == [("start", running_id)]
    labels = watch.events[0].labels
    assert labels[AUTOUPDATE_LABEL] == "registry"
    assert labels[UNIT_LABEL] == unit
    assert watch.events[0].image == image
    print(f"\nstopped {stopped_in:.2f}s after stop was set")


def test_stop_ends_an_idle_watch_within_its_timeout(podman_url: str) -> None:
    watch = Watch(podman_url, timeout=2.0)
    time.sleep(2.5)  # past one reopening
    stopped_in = watch.end(within=2.0 + 2.0)
    assert watch.error is None
    assert watch.events == []
    assert stopped_in < 2.0 + 1.0
    print(f"\nidle watch stopped {stopped_in:.2f}s after stop was set")


@unclosed_podman_sockets
def test_watch_raises_naming_podman_when_it_is_unreachable_or_goes_away(
    stack: Stack, private_podman: Callable[[], PodmanService]
) -> None:
    missing = f"unix://{stack.root}/no-podman-here.sock"
    with pytest.raises(ContainerRuntimeError, match=f"opening the event stream of {missing}"):
        next(watch_container_events(missing, timeout=2.0))
    gc.collect()

    service = private_podman()
    watch = Watch(service.url, timeout=2.0)
    service.stop()
    watch.thread.join(15.0)
    assert not watch.thread.is_alive(), "the watch did not end when Podman went away"
    assert isinstance(watch.error, ContainerRuntimeError)
    assert service.url in str(watch.error)


@unclosed_podman_sockets
def test_follow_survives_an_outage_and_a_failing_handler_and_stops(
    stack: Stack,
    image: str,
    private_podman: Callable[[], PodmanService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="podhook.worker")
    url = f"unix://{stack.root / 'events-podman.sock'}"  # where private_podman() listens
    seen: list[ContainerEvent] = []

    def on_event(event: ContainerEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("the handler failed")

    stop = threading.Event()
    thread = threading.Thread(
        target=follow_container_events,
        args=(url, on_event, stop),
        kwargs={"retry_seconds": 0.2},
        daemon=True,
    )
    thread.start()
    try:
        time.sleep(1.5)  # several retries against a socket nobody listens on
        private_podman()
        wait_for(
            lambda: any("restored" in r.getMessage() for r in caplog.records),
            15.0,
            "the stream to be restored",
        )
        for name in ("ev-follow-1", "ev-follow-2"):
            stack.podman("create", "--name", name, "--label", f"{AUTOUPDATE_LABEL}=local", image)
        wait_for(lambda: len(seen) == 2, 30.0, "both create events")
    finally:
        t = time.monotonic()
        stop.set()
        thread.join(1.0 + 2.0)  # stop is noticed within retry_seconds, 1 s at least
        stopped_in = time.monotonic() - t
        stack.podman("rm", "-f", "ev-follow-1", "ev-follow-2", check=False)
        gc.collect()

    assert not thread.is_alive(), "follow_container_events still runs after stop"
    assert [(event.action, event.name) for event in seen] == [
        ("create", "ev-follow-1"),
        ("create", "ev-follow-2"),
    ]
    assert seen[0].labels[AUTOUPDATE_LABEL] == "local"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert url in warnings[0].getMessage()
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["handling create of container ev-follow-1"]
    print(f"\nfollow stopped {stopped_in:.2f}s after stop was set")
