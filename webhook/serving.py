"""How `podhook serve` runs gunicorn: threaded workers that no slow or idle client can hold.

gunicorn's sync workers serve one connection at a time per process, so two clients that open a
connection and send nothing stop every delivery. Threaded workers (``gthread``) wait for idle
connections in their main loop instead; what stays is a client that sends its request a byte
at a time, which would hold a thread for as long as it likes. ``DeadlineThreadWorker`` gives
every request a deadline: its head must arrive within ``HEAD_SECONDS`` of its first byte and
its body within ``BODY_SECONDS`` more. A late head closes the connection; a late body reaches
the application as ``RequestTimeoutError`` (the route answers 408 JSON), and the connection is
closed after the answer.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from gunicorn.http.errors import NoMoreData
from gunicorn.workers import gthread
from gunicorn.workers.gthread import TConn, ThreadWorker

from workers.settings import Settings

# A registry posts its request at once; these leave a slow link ample room (1 MiB in 20 s is
# 50 KiB/s) and no room for a client that trickles.
HEAD_SECONDS = 10.0
BODY_SECONDS = 20.0
# How long a thread waits for the first byte of a new connection before handing it back to
# the worker's main loop, which waits for any number of idle connections without a thread
# (gunicorn waits 5 s: with many idle connections, every thread would wait meanwhile).
FIRST_BYTE_SECONDS = 0.25
THREADS = 32
KEEPALIVE_SECONDS = 5
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 50
LIMIT_REQUEST_FIELD_SIZE = 8190


class RequestTimeoutError(NoMoreData):
    """Raised by a read of a request that did not arrive by its deadline.

    A ``NoMoreData`` for gunicorn, which then closes the connection without a traceback.
    """

    def __init__(self) -> None:
        super().__init__(b"")

    def __str__(self) -> str:
        return "the request did not arrive in time"


class DeadlineSocket:
    """The client socket as gunicorn's parser reads it: no read ends after ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value, or None for no deadline.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.deadline: float | None = None

    def recv(self, size: int) -> bytes:
        """Read up to ``size`` bytes. Raises RequestTimeoutError once the deadline has passed."""
        if self.deadline is None:
            return self.sock.recv(size)  # type: ignore[no-any-return]
        prior = self.sock.gettimeout()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeoutError()
        self.sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return self.sock.recv(size)  # type: ignore[no-any-return]
        except TimeoutError:
            if time.monotonic() >= self.deadline:
                raise RequestTimeoutError() from None
            raise
        finally:
            self.sock.settimeout(prior)

    def gettimeout(self) -> float | None:
        """The socket's own timeout."""
        return self.sock.gettimeout()  # type: ignore[no-any-return]

    def settimeout(self, value: float | None) -> None:
        """Set the socket's own timeout (gunicorn bounds its body drain with it)."""
        self.sock.settimeout(value)


# The deadline reader of each client socket, for the application to find through the socket
# gunicorn gives it (``environ["gunicorn.socket"]``).
_READERS: weakref.WeakKeyDictionary[Any, DeadlineSocket] = weakref.WeakKeyDictionary()


class DeadlineConn(TConn):  # type: ignore[misc]
    """A connection whose HTTP/1 parser reads through a ``DeadlineSocket``."""

    reader: DeadlineSocket | None = None

    def init(self) -> None:
        """Set up the connection as gunicorn does, then put the deadline reader under it."""
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        if self.reader is None and getattr(unreader, "sock", None) is self.sock:
            self.reader = _READERS[self.sock] = DeadlineSocket(self.sock)
            unreader.sock = self.reader  # type: ignore[union-attr]


class DeadlineThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker with a deadline on reading each request."""

    def enqueue_req(self, conn: Any) -> None:
        """Hand the connection to a thread, as a ``DeadlineConn``."""
        if type(conn) is TConn:
            conn.__class__ = DeadlineConn
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve one request of ``conn``, its head due ``HEAD_SECONDS`` from its first byte."""
        fresh = not conn.initialized and not conn.data_ready
        if fresh and not conn.wait_for_data(FIRST_BYTE_SECONDS):
            return gthread._DEFER  # back to the main loop until the client sends
        if conn.reader is not None:
            conn.reader.deadline = time.monotonic() + HEAD_SECONDS
        return super().handle(conn)


def start_body_deadline(environ: dict[str, Any]) -> None:
    """Give the body of the request in ``environ`` ``BODY_SECONDS`` from now to arrive.

    Does nothing outside ``DeadlineThreadWorker`` (the Flask test client, another server).
    """
    sock = environ.get("gunicorn.socket")
    reader = _READERS.get(sock) if sock is not None else None
    if reader is not None:
        reader.deadline = time.monotonic() + BODY_SECONDS


def gunicorn_options(settings: Settings) -> list[str]:
    """The gunicorn command-line options of `podhook serve` (workers, threads, limits)."""
    return [
        "--bind",
        settings.bind,
        "--workers",
        str(settings.web_workers),
        "--worker-class",
        f"{__name__}.DeadlineThreadWorker",
        "--threads",
        str(THREADS),
        "--keep-alive",
        str(KEEPALIVE_SECONDS),
        # gthread's main loop beats for its worker whatever its threads do: a worker is
        # restarted only when that loop itself is stuck.
        "--timeout",
        "30",
        "--graceful-timeout",
        "10",
        "--limit-request-line",
        str(LIMIT_REQUEST_LINE),
        "--limit-request-fields",
        str(LIMIT_REQUEST_FIELDS),
        "--limit-request-field_size",
        str(LIMIT_REQUEST_FIELD_SIZE),
    ]
