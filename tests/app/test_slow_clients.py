"""`podhook serve` under idle and slow clients and wrongly framed bodies: real gunicorn and Redis.

Deliveries are accepted while other clients hold connections open without sending, or send
their request a byte at a time; a body that trickles gets a JSON 408, a body framed wrongly
a JSON 400, and neither holds the server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.app.served import Served, podhook_serve, raw_request, read_response
from tests.app.test_webhook_app import DISTRIBUTION_TYPE, envelope, manifest_push
from webhook.serving import BODY_SECONDS
from workers.hosts import register_host

TOKEN = "slow-clients-token-5d1e"
PATH = "/v1/webhooks/distribution"


@pytest.fixture
def served(tmp_path, redis_url, redis) -> Iterator[Served]:
    register_host(redis, "host-a")
    env = {"PODHOOK_REDIS_URL": redis_url, "PODHOOK_WEBHOOK_TOKEN": TOKEN}
    # One worker process: what holds must hold without another process to fall back on.
    with podhook_serve(tmp_path / "serve", env, workers=1) as server:
        yield server


def deliver(served: Served, tag: str) -> tuple[int, dict]:
    """One real delivery (a manifest push of ``tag``) on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        connection.request(
            "POST",
            PATH,
            body=envelope(manifest_push(tag=tag)),
            headers={"Content-Type": DISTRIBUTION_TYPE, "Authorization": f"Bearer {TOKEN}"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def head(length: int, extra: str = "") -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: podhook\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {DISTRIBUTION_TYPE}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def chunked(extra: str = "") -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: podhook\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {DISTRIBUTION_TYPE}\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
    ).encode()


def is_open(sock: socket.socket) -> bool:
    """Whether the server still keeps ``sock`` open (nothing to read, no end of stream)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


class Trickle(threading.Thread):
    """Sends a request head one byte every half second on each socket, never finishing it."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        super().__init__(daemon=True)
        self.sockets = sockets
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"X")


def test_deliveries_are_accepted_while_idle_and_slow_clients_hold_connections(served, redis):
    idle = [served.connect() for _ in range(10)]
    slow = [served.connect() for _ in range(10)]
    for sock in slow:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: podhook\r\nX-Slow: ".encode())
    trickle = Trickle(slow)
    trickle.start()
    try:
        answers = [deliver(served, f"1.{n}") for n in range(3)]
        held = [is_open(sock) for sock in slow]
    finally:
        trickle.done.set()
        trickle.join()
        for sock in idle + slow:
            sock.close()
    assert [status for status, _ in answers] == [202, 202, 202], answers
    assert all(len(body["queued"]) == 1 for _, body in answers)
    assert all(held), "the slow clients were let go before the deliveries were answered"
    assert len(redis.keys("rq:job:*")) == 3


def test_a_body_that_trickles_gets_a_json_408_and_the_connection_closed(served, redis):
    body = envelope(manifest_push())
    with served.connect() as sock:
        sock.sendall(head(len(body)) + body[:10])
        stop = threading.Event()

        def trickle() -> None:
            for byte in body[10:-1]:
                if stop.wait(0.5):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            sock.settimeout(BODY_SECONDS + 30)  # a generous wait: the answer comes at the deadline
            status, answer = read_response(sock)
        finally:
            stop.set()
            sender.join()
    assert status == 408
    assert "did not arrive" in json.loads(answer)["error"]
    assert redis.keys("rq:job:*") == []
    assert deliver(served, "2.0")[0] == 202


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (chunked() + b"zz\r\nabc\r\n0\r\n\r\n", "InvalidChunkSize"),
        (chunked() + b"5\r\nabcdefgh\r\n0\r\n\r\n", "ChunkMissingTerminator"),
        (chunked() + b"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n", "InvalidHeader"),
        # 20 hex digits announce a chunk larger than any body; the client then stops.
        (chunked() + b'FFFFFFFFFFFFFFFFFFFF\r\n{"events": []', "ended before"),
        (head(500) + b'{"events": []}', "ended before"),
    ],
    ids=["bad-chunk-size", "chunk-too-long", "bad-trailer", "huge-chunk-size", "short-body"],
)
def test_a_body_framed_wrongly_gets_a_json_400(served, redis, data, named):
    status, answer = raw_request(served, data, shutdown=True)
    assert status == 400, answer
    assert named in json.loads(answer)["error"]
    assert redis.keys("rq:job:*") == []


def test_a_chunked_body_that_is_right_is_read(served, redis):
    body = envelope(manifest_push())
    data = chunked() + b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])
    )
    status, answer = raw_request(served, data + b"0\r\n\r\n")
    assert status == 202, answer
    assert len(json.loads(answer)["queued"]) == 1


def test_heads_over_the_limits_are_refused(served, redis):
    long_line = f"POST {PATH}?{'a' * 5000} HTTP/1.1\r\nHost: podhook\r\n\r\n".encode()
    assert raw_request(served, long_line)[0] == 414
    many = "".join(f"X-{n}: {n}\r\n" for n in range(60))
    assert raw_request(served, head(2, many) + b"{}")[0] == 431
    # The server is still there for everyone else.
    assert deliver(served, "3.0")[0] == 202
