"""Session fixtures over tests/integration/harness.py: real Redis, registry, Podman, systemd.

The whole stack starts once per session (a few seconds) on first use and is torn down at the
end, including after failures. Function-scoped fixtures give each test a clean slate: an empty
Redis, registry notifications of its own, units and processes removed after it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import ManagedProcess, PushedImage, Registry, Stack  # noqa: E402


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The running stack: ``.env``, ``.registry``, ``.redis``, ``.systemd``, helpers."""
    # SIGTERM (a CI timeout, say) would end Python without teardown: make it an interrupt,
    # which pytest turns into an orderly stop that runs this fixture's cleanup.
    previous = None
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        try:
            started = harness.start_stack()
        except harness.HarnessError as error:
            pytest.fail(f"integration stack did not start: {error}", pytrace=False)
        try:
            yield started
        finally:
            problems = started.close()
            if problems:
                print(f"\nharness teardown: {'; '.join(problems)}", file=sys.stderr)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def podhook_env(stack: Stack) -> dict[str, str]:
    """PODHOOK_* and the D-Bus/XDG/CONTAINERS_* variables podhook's processes need (a copy)."""
    return dict(stack.env)


@pytest.fixture(scope="session")
def redis_url(stack: Stack) -> str:
    assert stack.redis is not None
    return stack.redis.url


@pytest.fixture
def clean_redis(stack: Stack) -> Iterator[str]:
    """Redis emptied before the test (and after it); yields the URL."""
    assert stack.redis is not None
    stack.redis.flush()
    yield stack.redis.url
    stack.redis.flush()


@pytest.fixture(scope="session")
def registry(stack: Stack) -> Registry:
    """The test registry (``.host`` is 127.0.0.1:<port>, insecure in registries.conf)."""
    assert stack.registry is not None
    return stack.registry


@pytest.fixture
def registry_notifications(registry: Registry) -> Iterator[Callable[..., None]]:
    """``configure(url, token, **kw)``: restart the registry (same port, same images) with
    notifications to ``url`` carrying ``Authorization: Bearer <token>``. Reset after the test."""
    yield registry.configure
    if registry.notify_url is not None:
        registry.configure(None)


@pytest.fixture(scope="session")
def podman_url(stack: Stack) -> str:
    assert stack.podman_service is not None
    return stack.podman_service.url


@pytest.fixture
def podman_client(podman_url: str) -> Iterator[Any]:
    """A podman-py PodmanClient on the stack's API socket (closed after the test)."""
    from podman import PodmanClient

    with PodmanClient(base_url=podman_url) as client:
        yield client


@pytest.fixture
def push_image(stack: Stack) -> Callable[..., PushedImage]:
    """``push_image(repository, tag, marker=None, command=DEFAULT_COMMAND)``: build a
    busybox image whose /version holds ``marker`` (default: tag), push it, return PushedImage
    (``.ref``, ``.digest``)."""
    return stack.build_and_push


@pytest.fixture
def units(stack: Stack) -> Iterator[Any]:
    """Creates containers under units (``.container(name, image)``, ``.kube(pod, image)``,
    ``.pod(pod, image)``) and removes every unit it made after the test."""
    made: list[str] = []

    class Units:
        def container(self, name: str, image: str, **kwargs: Any) -> str:
            made.append(f"container-{name}.service")
            return stack.create_unit_container(name, image, **kwargs)

        def kube(
            self, pod: str, image: str | Mapping[str, str], start: bool = True, **kwargs: Any
        ) -> str:
            unit = stack.create_kube_unit(pod, image, start=False, **kwargs)
            made.append(unit)
            if start:
                stack.systemctl("start", unit)
                stack.wait_unit(unit, "active", 60.0)
            return unit

        def pod(self, pod: str, image: str, **kwargs: Any) -> dict[str, str]:
            containers = kwargs.get("containers", ("a", "b"))
            made.append(f"pod-{pod}.service")
            made.extend(f"container-{pod}-{c}.service" for c in containers)
            return stack.create_pod_units(pod, image, **kwargs)

    yield Units()
    for unit in reversed(made):
        stack.remove_unit(unit)
    stack.podman("pod", "rm", "-af", "-t", "0", check=False)
    stack.podman("rm", "-af", "-t", "0", check=False)


@pytest.fixture
def spawn(stack: Stack) -> Iterator[Callable[..., ManagedProcess]]:
    """``spawn(cmd, env=None, name=None, ready_port=, ready_url=, ready=)``: start a process
    (gunicorn, an RQ worker) with the stack's env; stopped after the test."""
    started: list[ManagedProcess] = []

    def start(cmd: list[str], **kwargs: Any) -> ManagedProcess:
        proc = stack.start_process(cmd, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
