"""`podhook serve` as deployed, on a free loopback port, with its output kept in files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PODHOOK = str(Path(sys.executable).parent / "podhook")


@dataclass
class Served:
    """A running `podhook serve`: where it listens and where its output goes."""

    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        """A new TCP connection to the app."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=60)

    def output(self) -> str:
        """Everything the server wrote so far: the access log (stdout) and its log (stderr)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@contextmanager
def podhook_serve(
    directory: Path, env: Mapping[str, str], config: str = "", workers: int = 2
) -> Iterator[Served]:
    """Run `podhook serve` with ``env`` (PODHOOK_* settings) and a settings file ``config``.

    Waits for /healthz, and stops the server (SIGTERM, then SIGKILL) on the way out.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = directory / "podhook.toml"
    settings.write_text(config)
    full_env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PODHOOK_")},
        "PODHOOK_CONFIG": str(settings),
        "TMPDIR": str(directory),  # where serve writes gunicorn's logging configuration
        **env,
    }
    served = Served(port, directory / "stdout", directory / "stderr")
    with served.stdout.open("wb") as out, served.stderr.open("wb") as err:
        server = subprocess.Popen(
            [PODHOOK, "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            env=full_env,
            stdout=out,
            stderr=err,
            cwd=ROOT,
        )
        try:
            _wait_ready(served, server)
            yield served
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_ready(served: Served, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"podhook serve exited:\n{served.output()}")
        try:
            with urllib.request.urlopen(served.url + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"podhook serve did not answer /healthz:\n{served.output()}")


def raw_request(served: Served, data: bytes, *, shutdown: bool = False) -> tuple[int, bytes]:
    """Send ``data`` as it is on a new connection; the status and body of the answer.

    ``shutdown`` closes the sending side afterwards, as a client that has nothing more to say.
    """
    with served.connect() as sock:
        sock.sendall(data)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP/1.1 answer with a Content-Length from ``sock``: its status and body."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {buffer!r}")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    lengths = [int(line.split(b":", 1)[1]) for line in lines if b"content-length:" in line.lower()]
    length = lengths[0] if lengths else None
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body
