"""Podman's container events, narrowed to auto-update containers, as a stream of small values."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, PodmanError
from urllib3.exceptions import ReadTimeoutError

from workers.podman_runtime import AUTOUPDATE_LABEL, ContainerRuntimeError

log = logging.getLogger("podhook.worker")

DEFAULT_ACTIONS = ("create", "start", "remove", "died")
# What Podman 4.3 puts into Actor.Attributes besides the container's labels.
PODMAN_ATTRIBUTES = frozenset({"name", "image", "podId", "containerExitCode"})


@dataclass(frozen=True)
class ContainerEvent:
    """Something happened to a container that carries the auto-update label.

    ``action`` is Podman's name for it (``create``, ``start``, ``died``, ``remove``...),
    ``image`` the reference the container was created from, ``time`` Podman's clock in seconds.
    """

    action: str
    container_id: str
    name: str
    image: str
    labels: Mapping[str, str]
    time: float


def watch_container_events(
    podman_url: str,
    *,
    actions: Collection[str] = DEFAULT_ACTIONS,
    stop: threading.Event | None = None,
    timeout: float = 5.0,
) -> Iterator[ContainerEvent]:
    """Yield events of auto-update containers as Podman reports them, from the first ``next``.

    Only ``actions`` are asked for; each event comes once, in Podman's time order. Ends when
    ``stop`` is set, noticed within ``timeout`` seconds: the stream is read with that timeout
    and reopened after it (or after Podman ends it), resuming after the last event Podman sent.
    Raises ContainerRuntimeError, naming ``podman_url``, when Podman cannot be reached, the
    stream breaks, or it keeps ending.
    """
    return _watch(podman_url, actions, stop, timeout, on_open=None)


def _watch(
    podman_url: str,
    actions: Collection[str],
    stop: threading.Event | None,
    timeout: float,
    on_open: Callable[[], None] | None,
) -> Iterator[ContainerEvent]:
    filters: dict[str, list[str]] = {"type": ["container"]}
    if actions:
        filters["event"] = list(actions)
    # Podman 4.3 matches an event "label" filter only as key=value (a bare key matches
    # nothing), and the policy has more than one value: filter by the key here instead.
    params = {"stream": "true", "filters": json.dumps(filters)}
    # Each stream starts when the watch began (this host's clock: the URL is normally its
    # socket), then after the newest event seen. Podman 4.3 reads all its history to honour
    # "since" (libpod/events): events.log, at most 1 MB by default, or the whole journal. So
    # "since" only with the file backend, where a stream reopened without it misses what
    # happened meanwhile (two thirds of the events, reopening every second). The journal
    # backend follows the journal without polling and starts at its tail: a reopening misses
    # only its own moment. When events.log rotates (keeping its newer half) a stream may send
    # events again; they come in time order, so one not newer than the newest is skipped.
    since_ns = time.time_ns()
    ended_at = -math.inf
    with PodmanClient(base_url=podman_url) as client:
        # /info gathers host and storage details: it may take longer than a read of events.
        info = _get(client, podman_url, "/info", timeout=max(timeout, 10.0)).json()
        resume = info.get("host", {}).get("eventLogger") == "file"
        while stop is None or not stop.is_set():
            if resume:
                params["since"] = _timestamp(since_ns)
            response = _get(
                client, podman_url, "/events", params=params, stream=True, timeout=timeout
            )
            if on_open is not None:
                on_open()
            try:
                for line in response.iter_lines():
                    if stop is not None and stop.is_set():
                        return
                    if not line:
                        continue
                    data = _decode(line, podman_url)
                    time_ns = int(data.get("timeNano") or 0)
                    if time_ns and time_ns <= since_ns:
                        continue
                    since_ns = max(since_ns, time_ns)
                    event = _container_event(data)
                    if event is not None:
                        yield event
            except OSError as error:
                if not _is_read_timeout(error):
                    raise ContainerRuntimeError(
                        f"reading the event stream of {podman_url}: {error}"
                    ) from error
            else:
                # Podman 4.3's file backend can end a "since" stream when events.log
                # rotates; reopen it, but not a stream that keeps ending.
                if time.monotonic() - ended_at < timeout:
                    raise ContainerRuntimeError(f"the event stream of {podman_url} ended")
                ended_at = time.monotonic()
            finally:
                response.close()


def follow_container_events(
    podman_url: str,
    on_event: Callable[[ContainerEvent], None],
    stop: threading.Event,
    retry_seconds: float = 5.0,
) -> None:
    """Call ``on_event`` for each auto-update container event until ``stop`` is set.

    Meant for a daemon thread of the worker process; ``stop`` is noticed within
    ``retry_seconds`` (taken as 1 s at least and 5 s at most). Never raises: an unreachable
    Podman or a broken stream is retried every ``retry_seconds`` with one warning per outage
    and an info line when it is over (events during an outage are lost: a periodic resync has
    to catch them), and an exception from ``on_event`` is logged and the next event handled.
    """
    outage = False

    def opened() -> None:
        nonlocal outage
        if outage:
            log.info("container events of %s: stream restored", podman_url)
            outage = False

    while not stop.is_set():
        try:
            events = _watch(
                podman_url, DEFAULT_ACTIONS, stop, min(max(retry_seconds, 1.0), 5.0), on_open=opened
            )
            for event in events:
                try:
                    on_event(event)
                except Exception:
                    log.exception("handling %s of container %s", event.action, event.name)
        except ContainerRuntimeError as error:
            if not outage:
                # str(): a kept record must not hold the error, whose traceback holds the
                # socket podman-py failed to connect (and does not close).
                log.warning("container events: %s; retrying every %gs", str(error), retry_seconds)
                outage = True
            stop.wait(retry_seconds)


def _get(client: PodmanClient, podman_url: str, path: str, timeout: float, **kwargs: Any) -> Any:
    try:
        response = client.api.get(path, timeout=(timeout, timeout), **kwargs)
        response.raise_for_status()
    except (APIError, PodmanError, OSError) as error:
        raise ContainerRuntimeError(f"opening the event stream of {podman_url}: {error}") from error
    return response


def _decode(line: bytes, podman_url: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as error:
        raise ContainerRuntimeError(
            f"reading the event stream of {podman_url}: not JSON ({error})"
        ) from None
    if not isinstance(data, dict):
        raise ContainerRuntimeError(f"reading the event stream of {podman_url}: not an event")
    return data


def _container_event(data: Mapping[str, Any]) -> ContainerEvent | None:
    """The event as a ContainerEvent, or None when it is not about an auto-update container."""
    actor = data.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    if data.get("Type") != "container" or AUTOUPDATE_LABEL not in attributes:
        return None
    time_ns = data.get("timeNano")
    return ContainerEvent(
        action=data.get("Action") or data.get("status", ""),
        container_id=actor.get("ID") or data.get("id", ""),
        name=attributes.get("name", ""),
        image=attributes.get("image") or data.get("from", ""),
        labels={k: v for k, v in attributes.items() if k not in PODMAN_ATTRIBUTES},
        time=time_ns / 1e9 if time_ns else float(data.get("time") or 0),
    )


def _is_read_timeout(error: OSError) -> bool:
    # requests turns urllib3's ReadTimeoutError while streaming a body into a ConnectionError
    # that carries it (requests/models.py, Response.iter_content).
    return any(isinstance(arg, ReadTimeoutError) for arg in error.args)


def _timestamp(time_ns: int) -> str:
    # RFC 3339 with nanoseconds, which Podman parses exactly (a float would round), and whose
    # "since" is exclusive: the event at that time is not sent again.
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{nanos:09d}Z"
