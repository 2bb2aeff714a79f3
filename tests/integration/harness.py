"""Real services for podhook's integration tests and bench scripts: no mocks.

``start_stack()`` starts, under one temporary directory in /tmp:

* Redis (``redis-server`` on a free port, nothing kept on disk);
* a CNCF distribution registry (``docker-registry serve``, plain HTTP on 127.0.0.1:<port>,
  filesystem storage, notifications configurable and re-configurable on the same port);
* an isolated Podman: containers.conf (runc, cgroupfs, host network, ulimits this machine
  accepts), storage.conf (overlay under the temp dir) and registries.conf (the test registry is
  insecure) passed through CONTAINERS_* variables, so nothing under /etc or the host's storage
  is touched; plus its REST API (``podman system service``) on a unix socket;
* a systemd user manager (``systemd --user``) with its own session D-Bus (the manager runs
  dbus-daemon itself through dbus.socket/dbus.service units written to XDG_CONFIG_HOME: systemd
  only registers org.freedesktop.systemd1 on a bus whose dbus.service it sees running), in a
  cgroup of its own so the host's processes are left where they are.

Images are built offline from busybox-static (``podman import`` in a separate build storage,
so the runtime storage only ever gets images by pulling them, as in production) and pushed with
skopeo. ``Stack.env`` carries what podhook's processes need. ``Stack.close()`` tears down
everything, and is safe to call after a failure at any point (also registered with atexit).

Plain functions and classes: usable from pytest (see conftest.py) and from bench scripts::

    with start_stack() as stack:
        pushed = stack.build_and_push("demo/app", "v1", marker="v1")
        unit = stack.create_unit_container("web", pushed.ref)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEMD_BINARY = "/lib/systemd/systemd"
BUSYBOX = "/bin/busybox"
REGISTRY_BINARY = "docker-registry"
NEEDED_BINARIES = (
    "podman",
    "runc",
    "skopeo",
    REGISTRY_BINARY,
    "redis-server",
    "dbus-daemon",
    "systemctl",
    "systemd-escape",
    "busctl",
)

# Every process the stack starts carries STACK_MARKER=<its temp dir> in its environment (so do
# their children: conmon, podman from units, gunicorn workers): teardown finds leftovers by it.
STACK_MARKER = "HARNESS_STACK_ROOT"

# A command that exits at once on SIGTERM (busybox sleep in the foreground would delay the
# trap until it returns, hence `sleep & wait`), so a unit restart takes a fraction of a second.
DEFAULT_COMMAND = ("/bin/sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait; done')


class HarnessError(RuntimeError):
    """A service did not start, a command failed or a wait timed out; the message says which."""


# --------------------------------------------------------------------------------------------
# small helpers


def missing_binaries() -> list[str]:
    """Names of the programs the stack needs that are not installed (see install-deps.sh)."""
    missing = [name for name in NEEDED_BINARIES if shutil.which(name) is None]
    missing += [path for path in (SYSTEMD_BINARY, BUSYBOX) if not os.path.exists(path)]
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Call ``predicate`` until it returns something truthy; return that, or raise HarnessError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local
            return int(response.status)
    except urllib.error.HTTPError as error:
        with contextlib.closing(error):
            return int(error.code)
    except (OSError, ValueError):
        return 0


def run(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; raise HarnessError when it fails."""
    try:
        result = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{' '.join(cmd)}: no result after {timeout}s") from None
    except OSError as error:
        raise HarnessError(f"{' '.join(cmd)}: {error}") from None
    if check and result.returncode != 0:
        raise HarnessError(
            f"{' '.join(cmd)} exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


class ManagedProcess:
    """A long-running process in its own session/process group, logging to a file.

    ``stop()`` sends SIGTERM to the whole group, then SIGKILL after ``grace`` seconds, and
    reaps the process (no ResourceWarning, no zombie). Idempotent.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: str | Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(  # noqa: S603 - harness commands
                self.cmd,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive():
            raise HarnessError(
                f"{self.name} exited with {self.popen.returncode}; log {self.log_path}:\n"
                f"{self.log_text()}"
            )

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Whatever else is left in the group (a child that ignored SIGTERM) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        return self.popen.returncode


def start_process(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    name: str | None = None,
    log_path: str | Path | None = None,
    cwd: str | Path | None = None,
    ready_port: int | None = None,
    ready_url: str | None = None,
    ready: Callable[[], Any] | None = None,
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start ``cmd`` (gunicorn, an RQ worker, ...) with ``os.environ`` updated by ``env``.

    Waits for ``ready_port`` to accept connections, ``ready_url`` to answer below 500, and/or
    ``ready()`` to return truthy; raises HarnessError with the log's tail if the process dies
    first. Stop it with ``.stop()`` (Stack.start_process also stops it at Stack.close()).
    """
    name = name or Path(cmd[0]).name
    full_env = {**os.environ, **(env or {})}
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="podhook-proc-")) / f"{name}.log"
    proc = ManagedProcess(name, cmd, full_env, Path(log_path), cwd=cwd)
    try:
        checks: list[tuple[str, Callable[[], Any]]] = []
        if ready_port is not None:
            checks.append((f"{name} on port {ready_port}", lambda: port_open(ready_port)))
        if ready_url is not None:
            checks.append((f"{name} at {ready_url}", lambda: 0 < http_status(ready_url) < 500))
        if ready is not None:
            checks.append((f"{name} ready", ready))
        for what, check in checks:

            def alive_and(check: Callable[[], Any] = check) -> Any:
                proc.check_alive()
                return check()

            wait_for(alive_and, timeout, what)
    except BaseException:
        proc.stop(grace=2)
        raise
    return proc


# --------------------------------------------------------------------------------------------
# Redis


@dataclass
class RedisServer:
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """Send one command (RESP) and return the raw first reply line."""
        payload = f"*{len(words)}\r\n".encode()
        for word in words:
            data = word.encode()
            payload += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.strip()

    def ping(self) -> bool:
        return self.command("PING") == b"+PONG"

    def flush(self) -> None:
        if self.command("FLUSHALL") != b"+OK":
            raise HarnessError("redis FLUSHALL failed")

    def stop(self) -> None:
        self.process.stop()


def start_redis(
    directory: Path,
    port: int | None = None,
    timeout: float = 20.0,
    env: Mapping[str, str] | None = None,
    aof: bool = False,
) -> RedisServer:
    """A throwaway redis-server on 127.0.0.1, its files in ``directory``: no RDB, and no AOF
    unless ``aof`` (then fsynced at every write, so a SIGKILL loses nothing written)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = ManagedProcess(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *(
                ("--appendonly", "yes", "--appendfsync", "always")
                if aof
                else ("--appendonly", "no")
            ),
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        directory / "redis.log",
        cwd=directory,
    )
    server = RedisServer(port, process)

    def up() -> bool:
        process.check_alive()
        return server.ping()

    try:
        wait_for(up, timeout, f"redis on port {port}")
    except BaseException:
        process.stop(grace=2)
        raise
    return server


# --------------------------------------------------------------------------------------------
# distribution registry


@dataclass
class Registry:
    """A docker-registry (CNCF distribution) on 127.0.0.1:<port>, plain HTTP.

    ``configure(notify_url, token)`` restarts it on the same port and storage with its
    notifications pointed at ``notify_url`` (or none), so images already pushed stay.
    """

    directory: Path
    port: int
    process: ManagedProcess | None = None
    notify_url: str | None = None
    token: str | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # added to the process environment
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.directory / "config.yml"

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def write_config(
        self,
        notify_url: str | None,
        token: str | None,
        headers: Mapping[str, str] | None = None,
        ignore_actions: Iterable[str] = (),
        ignore_media_types: Iterable[str] = (),
    ) -> None:
        storage = self.directory / "data"
        storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(storage))}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {json.dumps(self.host)}",
            "  secret: podhook-test-harness",
        ]
        if notify_url:
            all_headers = {**(headers or {})}
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            lines += [
                "notifications:",
                "  endpoints:",
                "    - name: podhook-test",
                f"      url: {json.dumps(notify_url)}",
                "      timeout: 3s",
                "      threshold: 1",
                "      backoff: 1s",
            ]
            if all_headers:
                lines.append("      headers:")
                lines += [
                    f"        {json.dumps(k)}: [{json.dumps(v)}]" for k, v in all_headers.items()
                ]
            actions, media = list(ignore_actions), list(ignore_media_types)
            if actions or media:
                lines.append("      ignore:")
                if media:
                    lines.append(f"        mediatypes: {json.dumps(media)}")
                if actions:
                    lines.append(f"        actions: {json.dumps(actions)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> None:
        self.process = ManagedProcess(
            "registry",
            [REGISTRY_BINARY, "serve", str(self.config_path)],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env},
            self.directory / "registry.log",
            cwd=self.directory,
        )
        process = self.process

        def up() -> bool:
            process.check_alive()
            return http_status(f"{self.url}/v2/") == 200

        try:
            wait_for(up, timeout, f"registry on {self.host}")
        except BaseException:
            process.stop(grace=2)
            raise

    def configure(
        self,
        notify_url: str | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        ignore_actions: Iterable[str] = (),
        ignore_media_types: Iterable[str] = (),
    ) -> None:
        """Restart with notifications to ``notify_url`` (None: no notifications)."""
        self.stop()
        self.write_config(notify_url, token, headers, ignore_actions, ignore_media_types)
        self.notify_url, self.token = notify_url, token
        self.restarts += 1
        self.start()

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry serves for ``repository:tag`` (a HEAD: no pull event)."""
        accept = ", ".join(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]
        )
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{tag}", method="HEAD", headers={"Accept": accept}
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local
            return str(response.headers["Docker-Content-Digest"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def start_registry(
    directory: Path,
    port: int | None = None,
    notify_url: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Registry:
    """Start a registry with notifications (bearer ``token``) to ``notify_url`` if given."""
    directory.mkdir(parents=True, exist_ok=True)
    registry = Registry(
        directory, port or free_port(), notify_url=notify_url, token=token, env=dict(env or {})
    )
    registry.write_config(notify_url, token, headers)
    registry.start()
    return registry


# --------------------------------------------------------------------------------------------
# Podman configuration and API service


def write_podman_config(
    directory: Path, insecure_registries: Iterable[str], network: str = "host"
) -> dict[str, str]:
    """Write containers.conf, storage.conf and registries.conf under ``directory``.

    Returns the CONTAINERS_* variables pointing at them. ``network`` is the default network
    mode of containers (host: no netavark bridge, no iptables rules on this machine).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "networks").mkdir(exist_ok=True)
    containers_conf = directory / "containers.conf"
    containers_conf.write_text(
        textwrap.dedent(
            f"""\
            [containers]
            # This machine refuses Podman's default (unlimited) nofile/nproc.
            default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
            netns = {json.dumps(network)}
            log_driver = "k8s-file"

            [engine]
            # crun refuses hybrid cgroups (v1 + unified); there is no system systemd to ask.
            runtime = "runc"
            cgroup_manager = "cgroupfs"
            events_logger = "file"
            tmp_dir = {json.dumps(str(directory / "libpod-tmp"))}
            volume_path = {json.dumps(str(directory / "volumes"))}

            [network]
            network_config_dir = {json.dumps(str(directory / "networks"))}
            """
        )
    )
    storage_conf = directory / "storage.conf"
    storage_conf.write_text(
        textwrap.dedent(
            f"""\
            [storage]
            driver = "overlay"
            graphroot = {json.dumps(str(directory / "storage"))}
            runroot = {json.dumps(str(directory / "runroot"))}
            """
        )
    )
    registries_conf = directory / "registries.conf"
    entries = "".join(
        f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in insecure_registries
    )
    registries_conf.write_text(
        "# podhook test harness: only fully qualified names, local registries over plain HTTP\n"
        "unqualified-search-registries = []\n" + entries
    )
    return {
        "CONTAINERS_CONF": str(containers_conf),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
    }


@dataclass
class PodmanService:
    socket_path: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        self.process.stop()


def start_podman_service(
    socket_path: Path, env: Mapping[str, str], log_path: Path, timeout: float = 30.0
) -> PodmanService:
    """``podman system service --time=0`` on ``socket_path`` with ``env`` (CONTAINERS_*)."""
    process = ManagedProcess(
        "podman-service",
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        env,
        log_path,
    )

    def up() -> bool:
        process.check_alive()
        if not socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.") and True

    try:
        wait_for(up, timeout, f"podman API on {socket_path}")
    except BaseException:
        process.stop(grace=2)
        raise
    return PodmanService(socket_path, process)


# --------------------------------------------------------------------------------------------
# systemd user manager


DBUS_SOCKET_UNIT = """\
[Unit]
Description=D-Bus User Message Bus Socket (podhook test harness)

[Socket]
ListenStream=%t/bus
"""

DBUS_SERVICE_UNIT = """\
[Unit]
Description=D-Bus User Message Bus (podhook test harness)
Requires=dbus.socket

[Service]
ExecStart=/usr/bin/dbus-daemon --session --address=systemd: --nofork --nopidfile \\
    --systemd-activation
"""

# Podman 4.3 ships this template in /usr/lib/systemd/user; written here only where it is not.
PODMAN_KUBE_TEMPLATE = """\
[Unit]
Description=A template for running K8s workloads via podman-play-kube
RequiresMountsFor=%t/containers

[Service]
Environment=PODMAN_SYSTEMD_UNIT=%n
TimeoutStopSec=70
ExecStart=/usr/bin/podman play kube --replace --service-container=true %I
ExecStop=/usr/bin/podman play kube --down %I
Type=notify
NotifyAccess=all
"""


def _cgroup_mounts() -> list[Path]:
    mounts = []
    with open("/proc/self/mounts") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) > 2 and parts[2] in ("cgroup", "cgroup2"):
                mounts.append(Path(parts[1].replace("\\040", " ")))
    return mounts


def _make_cgroup(name: str) -> list[Path]:
    """Create cgroup ``/<name>`` in every mounted hierarchy; return the directories made."""
    made = []
    for mount in _cgroup_mounts():
        path = mount / name
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError:
            continue
        made.append(path)
        # A v1 cpuset cgroup takes no task until it has cpus and mems.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                with contextlib.suppress(OSError):
                    (path / knob).write_text((mount / knob).read_text())
    return made


def _cgroup_pids(paths: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for path in paths:
        for procs in path.rglob("cgroup.procs") if path.exists() else ():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroup_tree(path: Path) -> None:
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove_host_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class UserSystemd:
    """``systemd --user`` with its session bus; units live in ``unit_dir``."""

    env: dict[str, str]
    runtime_dir: Path
    config_dir: Path
    process: ManagedProcess
    cgroups: list[Path]

    @property
    def unit_dir(self) -> Path:
        return self.config_dir / "systemd" / "user"

    @property
    def bus_address(self) -> str:
        return self.env["DBUS_SESSION_BUS_ADDRESS"]

    def systemctl(self, *args: str, check: bool = True, timeout: float = 90.0) -> str:
        return run(
            ["systemctl", "--user", "--no-pager", *args], self.env, timeout=timeout, check=check
        ).stdout

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def properties(self, unit: str, *names: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(names))
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {name: props.get(name, "") for name in names}

    def state(self, unit: str) -> str:
        """ActiveState of ``unit``: active, inactive, activating, deactivating, failed, ..."""
        return self.properties(unit, "ActiveState")["ActiveState"]

    def invocation_id(self, unit: str) -> str:
        """Changes on every start of the unit: tells a restart happened."""
        return self.properties(unit, "InvocationID")["InvocationID"]

    def wait_state(
        self,
        unit: str,
        state: str = "active",
        timeout: float = 30.0,
        not_invocation: str | None = None,
    ) -> dict[str, str]:
        """Wait until ``unit`` is ``state`` (and, with ``not_invocation``, started anew)."""
        names = ("ActiveState", "SubState", "InvocationID", "MainPID", "Result")
        last: dict[str, str] = {}

        def reached() -> dict[str, str] | None:
            nonlocal last
            last = self.properties(unit, *names)
            if not_invocation is not None and last["InvocationID"] in ("", not_invocation):
                return None
            if state != "failed" and last["ActiveState"] == "failed":
                raise HarnessError(f"{unit} failed: {last}; {self.unit_log_hint(unit)}")
            return last if last["ActiveState"] == state else None

        try:
            return wait_for(reached, timeout, f"{unit} to be {state}")
        except HarnessError as error:
            raise HarnessError(f"{error}; last seen {last}") from None

    def unit_log_hint(self, unit: str) -> str:
        status = self.systemctl("status", unit, check=False)
        return f"status:\n{status[-3000:]}\nmanager log: {self.process.log_path}"

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.alive():
            with contextlib.suppress(HarnessError):
                self.systemctl("exit", timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.popen.wait(timeout)
        self.process.stop(grace=5)


def start_user_systemd(
    root: Path, base_env: Mapping[str, str], cgroup_name: str, timeout: float = 30.0
) -> UserSystemd:
    """Start ``systemd --user`` (XDG dirs under ``root``) and its D-Bus; wait until both answer.

    ``base_env`` (CONTAINERS_*, PATH, HOME) becomes the manager's environment, so the units it
    runs (``podman run`` from generated units) use the isolated Podman. The manager is put in
    cgroup ``/<cgroup_name>`` first: started from the root cgroup it would move every process
    on the machine into its init.scope.
    """
    runtime_dir = root / "xdg-runtime"
    config_dir = root / "xdg-config"
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    unit_dir = config_dir / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / "dbus.socket").write_text(DBUS_SOCKET_UNIT)
    (unit_dir / "dbus.service").write_text(DBUS_SERVICE_UNIT)
    if not Path("/usr/lib/systemd/user/podman-kube@.service").exists():
        (unit_dir / "podman-kube@.service").write_text(PODMAN_KUBE_TEMPLATE)
    env = {
        **base_env,
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "XDG_CONFIG_HOME": str(config_dir),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime_dir}/bus",
    }
    cgroups = _make_cgroup(cgroup_name)
    procs_files = " ".join(str(p / "cgroup.procs") for p in cgroups)
    # The shell joins the cgroups, then becomes systemd (same pid). Strict: a manager left in
    # the root cgroup would move every process of the machine into its init.scope.
    script = (
        f'for f in {procs_files}; do echo $$ > "$f" || exit 97; done; exec {SYSTEMD_BINARY} --user'
    )
    process = ManagedProcess("systemd-user", ["/bin/sh", "-c", script], env, root / "systemd.log")
    manager = UserSystemd(env, runtime_dir, config_dir, process, cgroups)
    try:
        private = runtime_dir / "systemd" / "private"

        def manager_up() -> bool:
            process.check_alive()
            return private.exists() and run(
                ["systemctl", "--user", "is-system-running"], env, timeout=10, check=False
            ).stdout.strip() in ("running", "degraded")

        wait_for(manager_up, timeout, "systemd --user")
        manager.systemctl("start", "dbus.socket", "dbus.service")

        def on_bus() -> bool:
            out = run(
                [
                    "busctl",
                    "--user",
                    "call",
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "NameHasOwner",
                    "s",
                    "org.freedesktop.systemd1",
                ],
                env,
                timeout=10,
                check=False,
            ).stdout
            return out.strip() == "b true"

        wait_for(on_bus, timeout, "org.freedesktop.systemd1 on the session bus")
    except BaseException:
        manager.stop(timeout=5)
        for path in cgroups:
            _remove_cgroup_tree(path)
        raise
    return manager


# --------------------------------------------------------------------------------------------
# images


@dataclass(frozen=True)
class PushedImage:
    ref: str  # 127.0.0.1:<port>/<repo>:<tag>
    repository: str
    tag: str
    digest: str  # manifest digest in the registry (sha256:...)
    marker: str  # content of /version in the image

    @property
    def pinned(self) -> str:
        """``127.0.0.1:<port>/<repo>@sha256:...``"""
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"


def busybox_rootfs_tar(
    path: Path, marker: str, extra_files: Mapping[str, str] | None = None
) -> None:
    """A root filesystem tar: /bin/busybox (static), its applets as symlinks, /version=marker."""
    applets = run([BUSYBOX, "--list"]).stdout.split()
    with tarfile.open(path, "w") as tar:

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev", "run", "var"):
            add_dir(directory)
        with open(BUSYBOX, "rb") as handle:
            add_file("bin/busybox", handle.read(), 0o755)
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnobody:x:65534:\n")
        add_file("version", marker.encode() + b"\n")
        for name, text in (extra_files or {}).items():
            add_file(name.lstrip("/"), text.encode())


# --------------------------------------------------------------------------------------------
# image signatures


@dataclass(frozen=True)
class GpgKey:
    """A throwaway GPG signing key: its keyring (``home``, for GNUPGHOME), its fingerprint
    (what ``skopeo copy --sign-by`` takes) and its exported public key (what a ``signedBy``
    policy's ``keyPath`` names)."""

    home: Path
    fingerprint: str
    public_key: Path

    @property
    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def stop_agent(self) -> None:
        """Stop the gpg-agent that signing started for this keyring."""
        run(["gpgconf", "--kill", "all"], {**os.environ, **self.env}, check=False)


def generate_gpg_key(
    directory: Path, uid: str = "podhook test harness <podhook-test@example.invalid>"
) -> GpgKey:
    """A new passphrase-less ed25519 signing key in keyring ``directory`` (created, 0700), its
    public key exported next to it as ``public.gpg``. Needs ``gpg``."""
    directory.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(directory)}
    run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env,
    )
    listing = run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env).stdout
    fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
    if len(fingerprints) != 1:
        raise HarnessError(f"expected one key in {directory}, gpg lists {fingerprints}")
    public_key = directory / "public.gpg"
    run(["gpg", "--batch", "--yes", "--output", str(public_key), "--export", fingerprints[0]], env)
    return GpgKey(directory, fingerprints[0], public_key)


def write_signature_config(
    home: Path, policy: Mapping[str, Any], lookaside: Mapping[str, Path | str]
) -> Path:
    """Write a containers-policy.json and a registries.d under ``home``/.config/containers,
    where containers/image looks before /etc when HOME is ``home`` (see
    ``Stack.start_extra_podman_service``). ``lookaside`` maps a namespace (``host:port/repo``)
    to the directory its signatures are written to (``lookaside-staging``, by ``skopeo copy
    --sign-by``) and read from (``lookaside``): a plain distribution registry has no
    signature API; or to a URL (``http://...``) they are only read from. Returns the
    registries.d directory (for ``skopeo --registries.d``)."""
    config = home / ".config" / "containers"
    registries_d = config / "registries.d"
    registries_d.mkdir(parents=True, exist_ok=True)
    (config / "policy.json").write_text(json.dumps(policy, indent=2) + "\n")
    lines = ["docker:"]
    for namespace, where in lookaside.items():
        lines.append(f"  {json.dumps(namespace)}:")
        if isinstance(where, str):
            lines.append(f"    lookaside: {json.dumps(where)}")
            continue
        where.mkdir(parents=True, exist_ok=True)
        url = json.dumps(where.resolve().as_uri())
        lines += [f"    lookaside: {url}", f"    lookaside-staging: {url}"]
    (registries_d / "podhook-test.yaml").write_text("\n".join(lines) + "\n")
    return registries_d


# --------------------------------------------------------------------------------------------
# the whole stack


class Stack:
    """Everything above under one temp dir; see the module doc. Use ``start_stack()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.timings: dict[str, float] = {}
        self.redis: RedisServer | None = None
        self.registry: Registry | None = None
        self.podman_service: PodmanService | None = None
        self.systemd: UserSystemd | None = None
        self.processes: list[ManagedProcess] = []
        self.podman_env: dict[str, str] = {}  # runtime Podman: CONTAINERS_* + XDG_*
        self.build_env: dict[str, str] = {}  # image builds: a separate storage
        self.env: dict[str, str] = {}  # for podhook's processes
        self.cgroup_name = f"podhook-it-{root.name}"
        self.cgroups = [mount / self.cgroup_name for mount in _cgroup_mounts()]
        # Host paths that systemd --user / podman create even when configured away from them:
        # /run/systemd/system (we make it), /run/systemd/systemd-units-load (systemd) and
        # /run/containers/networks (netavark's lock dir, fixed in podman 4.3). Removed at the
        # end when they were not there at the start.
        self._host_paths_absent = [
            p
            for p in ("/run/systemd/system", "/run/systemd/systemd-units-load", "/run/containers")
            if not os.path.lexists(p)
        ]
        self._libpod_parent_existed = any((m / "libpod_parent").exists() for m in _cgroup_mounts())
        self._closed = False

    # -- start --------------------------------------------------------------------------------

    def _start(self) -> None:
        started = time.monotonic()
        path_env = os.environ.get(
            "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )
        home = self.root / "home"
        home.mkdir()
        marker = {STACK_MARKER: str(self.root)}
        base = {"PATH": path_env, "HOME": str(home), "LANG": "C.UTF-8", **marker}

        t = time.monotonic()
        self.redis = start_redis(self.root / "redis", env=marker)
        self.timings["redis"] = time.monotonic() - t

        t = time.monotonic()
        registry_port = free_port()
        podman_vars = write_podman_config(self.root / "podman", [f"127.0.0.1:{registry_port}"])
        build_vars = write_podman_config(self.root / "build", [f"127.0.0.1:{registry_port}"])
        self.podman_env = {**base, **podman_vars}  # completed with XDG_* below
        self.registry = start_registry(self.root / "registry", registry_port, env=marker)
        self.timings["registry"] = time.monotonic() - t

        # systemd --user checks for it (sd_booted); there is no systemd as PID 1 here.
        Path("/run/systemd/system").mkdir(parents=True, exist_ok=True)

        t = time.monotonic()
        self.systemd = start_user_systemd(self.root, {**base, **podman_vars}, self.cgroup_name)
        self.timings["systemd"] = time.monotonic() - t
        self.podman_env = {
            **base,
            **podman_vars,
            **{
                k: self.systemd.env[k]
                for k in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DBUS_SESSION_BUS_ADDRESS")
            },
        }
        self.build_env = {**base, **build_vars}

        t = time.monotonic()
        self.podman_service = start_podman_service(
            self.root / "podman.sock", self.podman_env, self.root / "podman-service.log"
        )
        self.timings["podman_service"] = time.monotonic() - t

        state_dir = self.root / "podhook-state"
        state_dir.mkdir()
        self.env = {
            "PODHOOK_REDIS_URL": self.redis.url,
            "PODHOOK_PODMAN_URL": self.podman_service.url,
            "PODHOOK_SYSTEMD_BUS": "user",
            "PODHOOK_STATE_DIR": str(state_dir),
            "DBUS_SESSION_BUS_ADDRESS": self.systemd.bus_address,
            "XDG_RUNTIME_DIR": self.systemd.env["XDG_RUNTIME_DIR"],
            "XDG_CONFIG_HOME": self.systemd.env["XDG_CONFIG_HOME"],
            **podman_vars,
            **marker,
        }
        self.timings["stack_start"] = time.monotonic() - started

    # -- podman / systemd conveniences ----------------------------------------------------------

    def podman(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run the podman CLI against the isolated runtime storage; return stdout."""
        return run(["podman", *args], self.podman_env, timeout=timeout, check=check).stdout

    def systemctl(self, *args: str, check: bool = True) -> str:
        assert self.systemd is not None
        return self.systemd.systemctl(*args, check=check)

    def wait_unit(
        self,
        unit: str,
        state: str = "active",
        timeout: float = 30.0,
        not_invocation: str | None = None,
    ) -> dict[str, str]:
        assert self.systemd is not None
        return self.systemd.wait_state(unit, state, timeout, not_invocation)

    def unit_state(self, unit: str) -> str:
        assert self.systemd is not None
        return self.systemd.state(unit)

    def container_info(self, name: str) -> dict[str, Any]:
        """What ``podman inspect`` says about a container: Id, Image (id), ImageName (the
        reference it was created from), ImageDigest, State, labels."""
        data = json.loads(self.podman("container", "inspect", name))[0]
        return {
            "id": data["Id"],
            "image_id": data["Image"],
            "image_name": data.get("ImageName"),
            "image_digest": data.get("ImageDigest"),
            "state": data["State"]["Status"],
            "labels": data["Config"].get("Labels") or {},
            "pod": data.get("Pod") or None,
        }

    def container_image(self, name: str) -> str:
        """The image ID a container runs."""
        return str(self.container_info(name)["image_id"])

    def image_info(self, ref: str) -> dict[str, Any]:
        return dict(json.loads(self.podman("image", "inspect", ref))[0])

    # -- images ----------------------------------------------------------------------------------

    def build_image(
        self,
        repository: str,
        tag: str,
        marker: str | None = None,
        command: Sequence[str] = DEFAULT_COMMAND,
        extra_files: Mapping[str, str] | None = None,
    ) -> str:
        """``podman import`` a busybox root fs with ``/version`` = marker (default: the tag)
        and CMD ``command``, in the build storage; return the local reference."""
        marker = tag if marker is None else marker
        work = Path(tempfile.mkdtemp(prefix="img-", dir=self.root / "build"))
        try:
            tar_path = work / "rootfs.tar"
            busybox_rootfs_tar(tar_path, marker, extra_files)
            local = f"localhost/{repository}:{tag}"
            run(
                [
                    "podman",
                    "import",
                    "--quiet",
                    "--change",
                    f"CMD {json.dumps(list(command))}",
                    str(tar_path),
                    local,
                ],
                self.build_env,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return local

    def push_image(
        self,
        local: str,
        repository: str,
        tag: str,
        manifest_format: str | None = None,
        *,
        sign_by: GpgKey | None = None,
        registries_d: Path | None = None,
    ) -> str:
        """skopeo copy a built image to the test registry; return its manifest digest.

        ``manifest_format``: None (skopeo's choice: OCI for these images), "oci" or "v2s2".
        ``sign_by``: sign it with that key (``--sign-by``), the signature written where
        ``registries_d`` (required then, see ``write_signature_config``) says."""
        assert self.registry is not None
        env = self.build_env
        if sign_by is not None:
            if registries_d is None:
                # Without one, skopeo writes signatures under the host's /var/lib/containers.
                raise HarnessError("signing a push needs the registries.d naming its lookaside")
            env = {**self.build_env, **sign_by.env}
        work = Path(tempfile.mkdtemp(prefix="push-", dir=self.root / "build"))
        try:
            digest_file = work / "digest"
            cmd = [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--digestfile",
                str(digest_file),
            ]
            if manifest_format:
                cmd += ["--format", manifest_format]
            if sign_by is not None:
                cmd += ["--sign-by", sign_by.fingerprint, "--registries.d", str(registries_d)]
            cmd += [
                f"containers-storage:{local}",
                f"docker://{self.registry.host}/{repository}:{tag}",
            ]
            run(cmd, env)
            return digest_file.read_text().strip()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def build_and_push(
        self,
        repository: str,
        tag: str,
        marker: str | None = None,
        command: Sequence[str] = DEFAULT_COMMAND,
        manifest_format: str | None = None,
        extra_files: Mapping[str, str] | None = None,
        *,
        sign_by: GpgKey | None = None,
        registries_d: Path | None = None,
    ) -> PushedImage:
        """Build an image whose content differs by ``marker`` and push it as ``repository:tag``
        (signed by ``sign_by`` when given, see ``push_image``).

        Push the same marker under another tag with ``push_image`` (same digest)."""
        assert self.registry is not None
        marker = tag if marker is None else marker
        local = self.build_image(repository, tag, marker, command, extra_files)
        digest = self.push_image(
            local, repository, tag, manifest_format, sign_by=sign_by, registries_d=registries_d
        )
        return PushedImage(
            f"{self.registry.host}/{repository}:{tag}", repository, tag, digest, marker
        )

    # -- a second Podman API service ------------------------------------------------------------

    def start_extra_podman_service(self, name: str, home: Path) -> PodmanService:
        """Another Podman API service over the stack's storage and configuration, on
        ``<root>/<name>.sock``, with HOME=``home``; stopped at ``close()`` (or ``.stop()``).

        containers/image (5.23, in Podman 4.3) takes the signature policy from
        ``$HOME/.config/containers/policy.json`` and lookaside locations from
        ``$HOME/.config/containers/registries.d`` when they exist, before /etc, for root too
        (signature.defaultPolicyPath, docker.registriesDirPath; nothing in containers.conf or
        the environment names them), and reads both on every pull: with files written by
        ``write_signature_config`` this service enforces a policy of the test's own, while
        /etc and the stack's main service are left as they are.
        """
        assert self.podman_env
        service = start_podman_service(
            self.root / f"{name}.sock",
            {**self.podman_env, "HOME": str(home)},
            self.root / f"{name}.log",
        )
        self.processes.append(service.process)
        return service

    # -- more hosts on this machine ---------------------------------------------------------------

    def start_fleet_host(self, name: str) -> FleetHost:
        """Another Podman host on this machine: its own containers.conf, storage, run and
        temp dirs (so its own containers, images and events), its own API service on
        ``<root>/<name>.sock``; its units run in the stack's systemd user manager with a
        drop-in naming its configuration. Stopped at ``close()``."""
        assert self.registry is not None and self.systemd is not None
        variables = write_podman_config(self.root / "hosts" / name, [self.registry.host])
        env = {**self.podman_env, **variables}
        service = start_podman_service(
            self.root / f"{name}.sock", env, self.root / f"{name}-podman.log"
        )
        self.processes.append(service.process)
        return FleetHost(name, env, variables, service, self)

    # -- registries.conf ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def registry_mirrors(self, mirrors: Sequence[str], timeout: float = 30.0) -> Iterator[None]:
        """Within the block, the stack's Podman pulls images of the test registry from
        ``mirrors`` (``host:port`` of other registries, plain HTTP) first, falling back to the
        test registry, as containers/image does for ``[[registry.mirror]]`` entries.

        The Podman API service caches registries.conf for its lifetime (containers/image
        sysregistriesv2 configCache); SIGHUP makes it reload (Podman's infra.StartWatcher): on
        the way in and out it is sent one, and the block starts (and ends) once ``/info``
        shows the mirrors (and then none). The file is put back as it was, whatever happens.
        """
        assert self.registry is not None
        conf = Path(self.podman_env["CONTAINERS_REGISTRIES_CONF"])
        original = conf.read_text()
        # The block write_podman_config wrote for the test registry: a registry may be listed
        # once, so its mirrors go into a block of its own that replaces that one.
        block = f'\n[[registry]]\nlocation = "{self.registry.host}"\ninsecure = true\n'
        if block not in original:
            raise HarnessError(f"{conf} has no block for {self.registry.host} to add mirrors to")
        mirrored = block + "".join(
            f'\n[[registry.mirror]]\nlocation = "{host}"\ninsecure = true\n' for host in mirrors
        )
        conf.write_text(original.replace(block, "") + mirrored)
        try:
            self.reload_registries(list(mirrors), timeout)
            yield
        finally:
            conf.write_text(original)
            self.reload_registries([], timeout)

    def reload_registries(self, mirrors: Sequence[str] = (), timeout: float = 30.0) -> None:
        """SIGHUP the Podman API service and wait until ``/info`` lists ``mirrors`` (the
        locations, in order) for the test registry: it has read registries.conf again."""
        assert self.podman_service is not None and self.registry is not None
        os.kill(self.podman_service.process.pid, signal.SIGHUP)
        host, want = self.registry.host, list(mirrors)
        wait_for(
            lambda: self.service_mirrors(host) == want,
            timeout,
            f"the Podman service to list mirrors {want} for {host}",
            interval=0.2,
        )

    def service_mirrors(self, host: str) -> list[str]:
        """The mirror locations the Podman API service uses for registry ``host`` now."""
        assert self.podman_service is not None
        from podman import PodmanClient  # noqa: PLC0415 - bench scripts need no podman-py

        with PodmanClient(base_url=self.podman_service.url, timeout=5) as client:
            entry = dict(client.info().get("registries") or {}).get(host) or {}
        return [str(mirror.get("Location")) for mirror in entry.get("Mirrors") or []]

    # -- containers under units ------------------------------------------------------------------

    def create_unit_container(
        self,
        name: str,
        image: str,
        *,
        extra_args: Sequence[str] = (),
        autoupdate: str | None = "registry",
        stop_timeout: int = 1,
        start: bool = True,
        timeout: float = 60.0,
    ) -> str:
        """The Podman way: ``podman create --name NAME --label io.containers.autoupdate=...``,
        ``podman generate systemd --new --name NAME --files`` into the user unit dir,
        daemon-reload, start ``container-NAME.service`` and wait until active. Returns the
        unit name; the running container carries label PODMAN_SYSTEMD_UNIT=<unit>."""
        self._create_container(name, image, autoupdate, stop_timeout, *extra_args)
        self._generate_units(name)
        self.podman("rm", "-f", name)  # the unit creates its own (--replace) from now on
        unit = f"container-{name}.service"
        assert self.systemd is not None
        self.systemd.daemon_reload()
        if start:
            self.systemctl("start", unit)
            self.wait_unit(unit, "active", timeout)
        return unit

    def _create_container(
        self, name: str, image: str, autoupdate: str | None, stop_timeout: int, *extra: str
    ) -> None:
        """``podman create`` a container, labelled for auto-update unless ``autoupdate`` is None."""
        args = ["create", "--name", name, "--stop-timeout", str(stop_timeout)]
        if autoupdate:
            args += ["--label", f"io.containers.autoupdate={autoupdate}"]
        self.podman(*args, *extra, image)

    def _generate_units(self, name: str) -> None:
        """``podman generate systemd --new --files`` for a container or pod, into the unit dir."""
        assert self.systemd is not None
        run(
            ["podman", "generate", "systemd", "--new", "--name", name, "--files"],
            self.podman_env,
            cwd=self.systemd.unit_dir,
        )

    def kube_yaml(
        self,
        pod: str,
        image: str | Mapping[str, str],
        containers: Sequence[str] = ("a", "b"),
        autoupdate: str | None = "registry",
    ) -> Path:
        """Write a Kubernetes Pod YAML: one pod, ``containers`` all from ``image``, or, when
        ``image`` maps container names to images, those containers from theirs."""
        images = dict(image) if isinstance(image, Mapping) else dict.fromkeys(containers, image)
        kube_dir = self.root / "kube"
        kube_dir.mkdir(exist_ok=True)
        lines = ["apiVersion: v1", "kind: Pod", "metadata:", f"  name: {pod}"]
        if autoupdate:
            lines += ["  annotations:", f"    io.containers.autoupdate: {autoupdate}"]
        # Host network: a kube pod would otherwise get a netavark bridge (iptables rules).
        lines += [
            "spec:",
            "  hostNetwork: true",
            "  terminationGracePeriodSeconds: 1",
            "  containers:",
        ]
        for container, container_image in images.items():
            lines += [f"  - name: {container}", f"    image: {container_image}"]
        path = kube_dir / f"{pod}.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def create_kube_unit(
        self,
        pod: str,
        image: str | Mapping[str, str],
        containers: Sequence[str] = ("a", "b"),
        autoupdate: str | None = "registry",
        start: bool = True,
        timeout: float = 60.0,
    ) -> str:
        """Several containers under ONE unit: ``podman-kube@<yaml>.service`` (Podman's template,
        ``podman play kube --replace --service-container=true``). Every container of the pod
        (named ``<pod>-<container>``), its infra container and the service container carry
        PODMAN_SYSTEMD_UNIT=<that unit>; only the pod's own containers carry the autoupdate
        label. Returns the unit name."""
        path = self.kube_yaml(pod, image, containers, autoupdate)
        unit = run(["systemd-escape", "--template", "podman-kube@.service", str(path)]).stdout
        unit = unit.strip()
        if start:
            self.systemctl("start", unit)
            self.wait_unit(unit, "active", timeout)
        return unit

    def create_pod_units(
        self,
        pod: str,
        image: str,
        containers: Sequence[str] = ("a", "b"),
        autoupdate: str | None = "registry",
        start: bool = True,
        timeout: float = 60.0,
    ) -> dict[str, str]:
        """``podman generate systemd --new --files --name POD``: one pod-POD.service plus one
        container-POD-X.service per container; each container is labelled with its OWN unit
        (not the pod's). Returns {container name: unit}, with the pod unit under ``pod``."""
        self.podman("pod", "create", "--network", "host", "--name", pod)
        units = {pod: f"pod-{pod}.service"}
        for container in containers:
            name = f"{pod}-{container}"
            self._create_container(name, image, autoupdate, 1, "--pod", pod)
            units[name] = f"container-{name}.service"
        self._generate_units(pod)
        self.podman("pod", "rm", "-f", pod)
        assert self.systemd is not None
        self.systemd.daemon_reload()
        if start:
            self.systemctl("start", units[pod])
            for unit in units.values():
                self.wait_unit(unit, "active", timeout)
        return units

    def remove_unit(self, unit: str) -> None:
        """Stop a unit and delete its file (generated or kube), then daemon-reload."""
        assert self.systemd is not None
        self.systemctl("stop", unit, check=False)
        self.systemctl("reset-failed", unit, check=False)
        path = self.systemd.unit_dir / unit
        path.unlink(missing_ok=True)
        self.systemd.daemon_reload()

    # -- processes ---------------------------------------------------------------------------

    def start_process(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> ManagedProcess:
        """``start_process`` with ``self.env`` (plus ``env``); stopped at ``close()`` if still
        running. Logs go to <root>/logs/<name>.log."""
        name = name or Path(cmd[0]).name
        log_dir = self.root / "logs"
        log_path = log_dir / f"{name}-{len(self.processes)}.log"
        proc = start_process(
            cmd, {**self.env, **(env or {})}, name=name, log_path=log_path, **kwargs
        )
        self.processes.append(proc)
        return proc

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop everything, remove the temp dir; return what went wrong (never raises)."""
        if self._closed:
            return []
        self._closed = True
        problems: list[str] = []

        def step(what: str, action: Callable[[], Any]) -> None:
            try:
                action()
            except Exception as error:  # noqa: BLE001 - teardown goes on
                problems.append(f"{what}: {error}")

        for proc in reversed(self.processes):
            step(f"stop {proc.name}", proc.stop)
        if self.systemd is not None and self.systemd.process.alive():
            step(
                "stop container units",
                lambda: self.systemctl(
                    "stop",
                    "container-*.service",
                    "pod-*.service",
                    "podman-kube@*.service",
                    check=False,
                ),
            )
        if self.podman_env:
            step("podman pod rm", lambda: self.podman("pod", "rm", "-af", "-t", "0", check=False))
            step("podman rm", lambda: self.podman("rm", "-af", "-t", "0", check=False))
        if self.podman_service is not None:
            step("stop podman service", self.podman_service.stop)
        if self.systemd is not None:
            step("stop systemd --user", self.systemd.stop)
        if self.registry is not None:
            step("stop registry", self.registry.stop)
        if self.redis is not None:
            step("stop redis", self.redis.stop)
        step("kill leftovers", self._kill_leftovers)
        step("unmount", self._unmount_all)
        for path in self.cgroups:
            step(f"remove cgroup {path}", functools.partial(_remove_cgroup_tree, path))
        if not self._libpod_parent_existed:
            for mount in _cgroup_mounts():
                step(
                    "remove libpod_parent",
                    functools.partial(_remove_cgroup_tree, mount / "libpod_parent"),
                )
        for host_path in self._host_paths_absent:
            step(f"remove {host_path}", functools.partial(_remove_host_path, Path(host_path)))
        if os.environ.get("PODHOOK_HARNESS_KEEP"):
            problems.append(f"kept {self.root} (PODHOOK_HARNESS_KEEP)")
        else:
            step("remove temp dir", lambda: shutil.rmtree(self.root))
        return problems

    def _leftover_pids(self) -> set[int]:
        """Processes of this stack still alive: in our cgroups, naming our temp dir, or carrying
        our STACK_MARKER in their environment."""
        pids = _cgroup_pids(self.cgroups)
        needle = str(self.root).encode()
        marker = f"{STACK_MARKER}={self.root}".encode() + b"\0"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if (
                    needle in (entry / "cmdline").read_bytes()
                    # redis-server rewrites its argv and environ (proc title): its cwd tells
                    or os.readlink(entry / "cwd").startswith(f"{self.root}/")
                    or marker in (entry / "environ").read_bytes() + b"\0"
                ):
                    pids.add(int(entry.name))
        pids.discard(os.getpid())
        return {pid for pid in pids if _process_identity(pid)}  # zombies are not left running

    def _kill_leftovers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._leftover_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            with contextlib.suppress(HarnessError):
                wait_for(lambda: not self._leftover_pids(), 5, "leftover processes to exit")
        if self._leftover_pids():
            raise HarnessError(f"processes left: {sorted(self._leftover_pids())}")

    def _unmount_all(self) -> None:
        prefix = str(self.root) + "/"
        points = []
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    points.append(point)
        for point in sorted(set(points), key=len, reverse=True):
            run(["umount", "-l", point], check=False)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


OWNER_FILE = "owner.pid"


@dataclass
class FleetHost:
    """A Podman host of its own on this machine (``Stack.start_fleet_host``)."""

    name: str
    podman_env: dict[str, str]
    variables: dict[str, str]  # the CONTAINERS_* of its configuration
    service: PodmanService
    stack: Stack

    def podman(self, *args: str, check: bool = True) -> str:
        """Run the podman CLI on this host's storage; return stdout."""
        return run(["podman", *args], self.podman_env, timeout=120, check=check).stdout

    def create_unit_container(
        self, name: str, image: str, extra_args: Sequence[str] = (), timeout: float = 60.0
    ) -> str:
        """As ``Stack.create_unit_container``, on this host: ``podman create`` with the
        autoupdate label, ``podman generate systemd --new``, a drop-in that points the unit's
        podman at this host's configuration; started and active. Returns the unit name."""
        systemd = self.stack.systemd
        assert systemd is not None
        self.podman(
            "create", "--name", name, "--stop-timeout", "1",
            "--label", "io.containers.autoupdate=registry", *extra_args, image,
        )  # fmt: skip
        run(
            ["podman", "generate", "systemd", "--new", "--name", name, "--files"],
            self.podman_env,
            cwd=systemd.unit_dir,
        )
        self.podman("rm", "-f", name)
        unit = f"container-{name}.service"
        dropin = systemd.unit_dir / f"{unit}.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "host.conf").write_text(
            "[Service]\n"
            + "".join(f"Environment={k}={v}\n" for k, v in sorted(self.variables.items()))
        )
        systemd.daemon_reload()
        self.stack.systemctl("start", unit)
        self.stack.wait_unit(unit, "active", timeout)
        return unit

    def container_image(self, name: str) -> str:
        """The image id container ``name`` of this host runs."""
        return str(json.loads(self.podman("container", "inspect", name))[0]["Image"])

    def image_id(self, ref: str) -> str:
        """The id of the local image ``ref`` on this host."""
        return str(json.loads(self.podman("image", "inspect", ref))[0]["Id"])

    def remove_unit(self, unit: str) -> None:
        """Stop and delete a unit made by ``create_unit_container`` with its drop-in."""
        systemd = self.stack.systemd
        assert systemd is not None
        self.stack.remove_unit(unit)
        shutil.rmtree(systemd.unit_dir / f"{unit}.d", ignore_errors=True)
        self.podman("rm", "-af", "-t", "0", check=False)

    def stop(self) -> None:
        """Stop this host's API service."""
        self.service.stop()


def _process_identity(pid: int) -> str:
    """``"<pid> <start time>"`` for a live process, "" for a dead one (or a zombie): a pid
    alone could have been reused since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return ""
    return f"{pid} {fields[19]}"


# --------------------------------------------------------------------------------------------
# /run/systemd/private, for `podman auto-update` as a reference

SYSTEM_MANAGER_SOCKET = Path("/run/systemd/private")


class SocketTakenError(HarnessError):
    """Raised when /run/systemd/private is something this harness did not make."""


def _stale_link(path: Path) -> bool:
    """Whether ``path`` is a link made for a stack that is gone (a killed session)."""
    if not path.is_symlink():
        return False
    target = os.readlink(path)
    return (
        target.startswith("/tmp/podhook-it-")
        and target.endswith("/xdg-runtime/systemd/private")
        and not os.path.exists(target)
    )


@contextlib.contextmanager
def system_manager_socket(stack: Stack) -> Iterator[Path]:
    """``/run/systemd/private`` linked to the stack's user manager for the block, removed
    after. Podman 4.3's auto-update, run as root, dials the system manager's private socket,
    even for --dry-run. Raises SocketTakenError when that path is something else (a real
    system manager, another run's link): it is not ours to replace."""
    target = Path(stack.env["XDG_RUNTIME_DIR"]) / "systemd" / "private"
    if not target.exists():
        raise HarnessError(f"the user manager has no private socket at {target}")
    if os.path.lexists(SYSTEM_MANAGER_SOCKET):
        if not _stale_link(SYSTEM_MANAGER_SOCKET):
            raise SocketTakenError(
                f"{SYSTEM_MANAGER_SOCKET} exists and is not a link of a finished stack: "
                "not replacing it (a systemd system manager, or another run in progress)"
            )
        SYSTEM_MANAGER_SOCKET.unlink()
    made_dir = not SYSTEM_MANAGER_SOCKET.parent.exists()
    SYSTEM_MANAGER_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_MANAGER_SOCKET.symlink_to(target)
    try:
        yield target
    finally:
        if SYSTEM_MANAGER_SOCKET.is_symlink() and os.readlink(SYSTEM_MANAGER_SOCKET) == str(target):
            SYSTEM_MANAGER_SOCKET.unlink()
        if made_dir:
            with contextlib.suppress(OSError):
                SYSTEM_MANAGER_SOCKET.parent.rmdir()


def cleanup_stale_stacks(parent: Path = Path("/tmp")) -> list[Path]:
    """Tear down what a killed session (SIGKILL: no teardown ran) left: every
    ``/tmp/podhook-it-*`` whose owner process is gone. Returns the directories cleaned."""
    cleaned = []
    for root in sorted(parent.glob("podhook-it-*")):
        try:
            owner = (root / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        if owner == _process_identity(os.getpid()) or (
            owner and owner == _process_identity(int(owner.split()[0]))
        ):
            continue  # a live session's
        stale = Stack(root)
        stale._libpod_parent_existed = True
        stale._host_paths_absent = []
        conf = root / "podman"
        if (conf / "containers.conf").exists():
            stale.podman_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "CONTAINERS_CONF": str(conf / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
            }
        stale.close()
        cleaned.append(root)
    live = [r for r in parent.glob("podhook-it-*") if (r / OWNER_FILE).exists()]
    if cleaned and not live and Path("/proc/1/comm").read_text().strip() != "systemd":
        # Left by the dead session; while it exists sd_booted() is true for every program
        # here (deb-systemd-invoke in package scripts would then try systemctl and fail).
        _remove_host_path(Path("/run/systemd/system"))
    return cleaned


def start_stack(root: str | Path | None = None) -> Stack:
    """Start Redis, the registry, systemd --user (+ D-Bus) and the Podman API service.

    ``root``: an empty directory to use (default: a new /tmp/podhook-it-XXXX). Returns the
    Stack; call ``close()`` (or use it as a context manager). Needs root (cgroups, mounts).
    """
    missing = missing_binaries()
    if missing:
        raise HarnessError(f"missing {', '.join(missing)}: run scripts/install-deps.sh")
    if os.geteuid() != 0:
        raise HarnessError("the integration stack needs root (systemd --user cgroups, overlay)")
    cleanup_stale_stacks()
    path = (
        Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="podhook-it-", dir="/tmp"))
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_FILE).write_text(_process_identity(os.getpid()) + "\n")
    stack = Stack(path)
    atexit.register(stack.close)
    try:
        stack._start()
    except BaseException:
        stack.close()
        raise
    return stack
