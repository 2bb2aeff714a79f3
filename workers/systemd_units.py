"""systemd behind a small interface: restart a unit and wait for its job, read a unit's state."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol


class UnitError(Exception):
    """Raised when systemd cannot be asked; the message names the unit and the operation."""


class SystemdUnreachableError(UnitError):
    """Raised when the bus itself failed (connection closed, no answer in time): whether
    systemd carried out the call is unknown, unlike a call systemd refused."""


def _unit_error(what: str, error: Any) -> UnitError:
    """UnitError for a GLib error: SystemdUnreachableError when the transport failed (a
    Gio error), plain UnitError when systemd answered with an error (no such unit, ...)."""
    unreachable = "g-io-error-quark" in str(getattr(error, "domain", ""))
    kind = SystemdUnreachableError if unreachable else UnitError
    return kind(f"{what}: {error.message}")


@dataclass(frozen=True)
class UnitState:
    """A unit's ActiveState and SubState, and how often systemd restarted it by itself."""

    active_state: str
    sub_state: str
    restarts: int

    @property
    def is_active(self) -> bool:
        """Whether the unit is up (ActiveState ``active``)."""
        return self.active_state == "active"


class UnitManager(Protocol):
    """What the update logic asks of systemd."""

    def restart(self, unit: str, timeout: float) -> str:
        """Restart ``unit`` and wait for the job; return its result (``done``, ``failed``, ...)."""
        ...

    def get_state(self, unit: str) -> UnitState:
        """The unit's current state. Raises UnitError."""
        ...

    def reset_failed(self, unit: str) -> None:
        """Clear the unit's failed state and start limit, so it can be started again."""
        ...

    def start_transient(
        self, unit: str, argv: list[str], environment: dict[str, str], timeout: float
    ) -> None:
        """Start ``argv`` as a one-shot transient ``unit`` of its own, without waiting for it.

        Raises UnitError when systemd refuses it."""
        ...


def session_bus_address() -> str:
    """The user bus address: DBUS_SESSION_BUS_ADDRESS, else ``$XDG_RUNTIME_DIR/bus``."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.geteuid()}")
    return f"unix:path={runtime_dir}/bus"


class DBusUnitManager:
    """UnitManager over systemd's D-Bus API (org.freedesktop.systemd1) with pydbus.

    ``bus`` is ``system`` (rootful Podman, system units) or ``user`` (rootless Podman, the
    calling user's manager). It connects on first use, so a job that restarts nothing never
    loads GLib nor opens the bus. Use it in the process that made it: a D-Bus connection does
    not survive a fork.
    """

    def __init__(self, bus: str = "system") -> None:
        self.bus_name = bus
        self._connected = False

    def _connect(self) -> None:
        """Open the bus and subscribe to systemd's signals, once. Raises
        SystemdUnreachableError."""
        if self._connected:
            return
        import pydbus  # noqa: PLC0415  (GLib is loaded only where systemd is used)
        from gi.repository import GLib  # noqa: PLC0415

        self._glib = GLib
        try:
            if self.bus_name == "system":
                self._bus = pydbus.SystemBus()
            else:
                self._bus = pydbus.connect(session_bus_address())
            self._manager = self._bus.get("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
            # Without Subscribe(), systemd does not emit JobRemoved to this client.
            self._manager.Subscribe()
        except GLib.Error as error:
            raise SystemdUnreachableError(
                f"connecting to the systemd {self.bus_name} bus: {error.message}"
            ) from error
        self._connected = True

    def restart(self, unit: str, timeout: float) -> str:
        """Call ``RestartUnit(unit, "replace")`` and wait for the job's JobRemoved signal.

        Returns the job result: ``done`` on success; ``failed``, ``timeout``, ``canceled``,
        ``dependency`` or ``skipped`` from systemd; ``timeout`` also when no result came within
        ``timeout`` seconds. Raises UnitError when systemd refuses the call (no such unit).
        """
        self._connect()
        results: dict[str, str] = {}

        def on_job_removed(_id: int, job: str, _unit: str, result: str) -> None:
            results[job] = result

        subscription = self._manager.JobRemoved.connect(on_job_removed)
        try:
            try:
                job = self._manager.RestartUnit(unit, "replace")
            except self._glib.Error as error:
                raise _unit_error(f"restarting {unit!r}", error) from error
            context = self._glib.MainContext.default()
            deadline = time.monotonic() + timeout
            while job not in results:
                if time.monotonic() > deadline:
                    return "timeout"
                if not context.iteration(False):
                    time.sleep(0.02)
            return results[job]
        finally:
            subscription.disconnect()

    def start_transient(
        self, unit: str, argv: list[str], environment: dict[str, str], timeout: float
    ) -> None:
        """``StartTransientUnit``: a ``Type=oneshot`` service running ``argv`` (as given, not
        subject to systemd's variable substitution) with ``environment``, stopped by systemd
        after ``timeout`` seconds. Its processes live in its own cgroup, so restarting any
        other unit does not touch them."""
        self._connect()
        variant = self._glib.Variant
        properties = [
            ("Description", variant("s", f"podhook: {' '.join(argv[:1])} ({unit})")),
            ("Type", variant("s", "oneshot")),
            # systemd substitutes ${NAME} and $NAME in ExecStart; "$$" is a literal "$".
            (
                "ExecStart",
                variant("a(sasb)", [(argv[0], [a.replace("$", "$$") for a in argv], False)]),
            ),
            ("Environment", variant("as", [f"{k}={v}" for k, v in sorted(environment.items())])),
            ("TimeoutStartUSec", variant("t", int(timeout * 1_000_000))),
        ]
        try:
            self._manager.StartTransientUnit(unit, "fail", properties, [])
        except self._glib.Error as error:
            raise UnitError(f"starting transient unit {unit!r}: {error.message}") from error

    def reset_failed(self, unit: str) -> None:
        """``ResetFailedUnit``: clear a failed state and the start limit a crash loop may have
        hit (a failed transient unit is dropped); nothing when there is nothing to reset."""
        self._connect()
        with contextlib.suppress(self._glib.Error):
            self._manager.ResetFailedUnit(unit)

    def get_state(self, unit: str) -> UnitState:
        """Read ActiveState, SubState and NRestarts of a loaded unit."""
        self._connect()
        try:
            path = self._manager.LoadUnit(unit)
            proxy: Any = self._bus.get("org.freedesktop.systemd1", path)
            restarts = int(getattr(proxy, "NRestarts", 0)) if unit.endswith(".service") else 0
            return UnitState(str(proxy.ActiveState), str(proxy.SubState), restarts)
        except self._glib.Error as error:
            raise _unit_error(f"reading the state of {unit!r}", error) from error
