"""The status page in real headless Chromium: login form, logged-in fleet view, phone layout.

Needs only Redis and the Debian ``chromium`` package, not the Podman/systemd stack: the app
runs in a thread (werkzeug) against a private redis-server, jobs are real RQ jobs worked by an
RQ SimpleWorker with the stand-in job of tests/app/test_api.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
import websocket
from redis import Redis
from werkzeug.serving import make_server

import workers.jobs
from tests.app.test_api import ADMIN, REASON_FAILED, WEBHOOK, fake_converge, seed, work
from webhook.app import create_app
from workers.hosts import register_host
from workers.inventory import publish_inventory

pytestmark = pytest.mark.integration

PHONE = (390, 844)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# Where the screenshots stay after the run, for a person to look at.
SCREENSHOT_DIR = Path(os.environ.get("PODHOOK_SCREENSHOT_DIR", "/tmp/podhook-page-screenshots"))


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed (scripts/install-deps.sh installs it)")


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def page_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.RedisServer]:
    server = harness.start_redis(tmp_path_factory.mktemp("page-redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seeded(page_redis: harness.RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The app with two hosts, host-a's inventory, pushes that ended updated, failed and
    rolled back, and one still queued."""
    monkeypatch.setattr(workers.jobs, "converge", fake_converge)
    page_redis.flush()
    redis = Redis.from_url(page_redis.url)
    register_host(redis, "host-a")
    register_host(redis, "host-b")
    app = create_app(redis_url=page_redis.url, webhook_token=WEBHOOK, admin_token=ADMIN)
    seed(app.test_client(), redis)
    # Published after the pushes: both hosts' inventories were unknown, so every push reached both.
    publish_inventory(
        redis,
        "host-a",
        {
            "collected_at": time.time(),
            "containers": [
                {
                    "id": "1f2e3d",
                    "name": "web",
                    "unit": "container-web.service",
                    "image": "registry.example.com/team/web:1.0",
                    "image_id": "sha256:" + "ab" * 32,
                    "policy": "registry",
                },
                {
                    "id": "4c5b6a",
                    "name": "api",
                    "unit": "podman-kube@-etc-containers-kube-api.yaml.service",
                    "image": "registry.example.com/team/api:2.1",
                    "image_id": "sha256:" + "cd" * 32,
                    "policy": "registry",
                },
            ],
        },
    )
    yield app, redis
    redis.close()


@pytest.fixture
def base_url(seeded: Any) -> Iterator[str]:
    app, _ = seeded
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    return subprocess.run(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {method} within {timeout} s")
            self.socket.settimeout(remaining)
            try:
                self.events.append(json.loads(self.socket.recv()))
            except websocket.WebSocketTimeoutException:
                continue
            finally:
                self.socket.settimeout(30)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def load(self, action: str) -> None:
        """Run ``action`` (JavaScript that navigates) and wait for the new page's load."""
        self.events.clear()
        self.evaluate(action)
        self.wait_event("Page.loadEventFired")

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def devtools(tmp_path: Path) -> Iterator[DevTools]:
    """Headless Chromium with the DevTools protocol, sized like a phone."""
    profile = tmp_path / "devtools-profile"
    process = subprocess.Popen(
        [
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={PHONE[0]},{PHONE[1]}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = None
    try:
        active_port = profile / "DevToolsActivePort"
        harness.wait_for(active_port.exists, 30, "chromium's DevToolsActivePort")
        port = int(active_port.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        [page] = [t for t in targets if t["type"] == "page"]
        client = DevTools(page["webSocketDebuggerUrl"])
        client.call("Page.enable")
        client.call(
            "Emulation.setDeviceMetricsOverride",
            width=PHONE[0],
            height=PHONE[1],
            deviceScaleFactor=2,
            mobile=True,
        )
        yield client
    finally:
        if client is not None:
            client.close()
        # The browser and its helpers share the session it was started in.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def save_screenshot(client: DevTools, name: str, full_page: bool = False) -> Path:
    import base64

    params: dict[str, Any] = {"format": "png"}
    if full_page:
        size = client.call("Page.getLayoutMetrics")["cssContentSize"]
        params["captureBeyondViewport"] = True
        params["clip"] = {"x": 0, "y": 0, "width": PHONE[0], "height": size["height"], "scale": 1}
    data = base64.b64decode(client.call("Page.captureScreenshot", **params)["data"])
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / name
    path.write_bytes(data)
    return path


def test_without_a_session_chromium_gets_the_login_form(base_url, tmp_path):
    dom = run_chromium(tmp_path, "--dump-dom", f"{base_url}/").stdout
    assert '<form method="post" action="/login"' in dom
    assert 'name="token"' in dom and 'type="password"' in dom
    assert "host-a" not in dom and "container-web.service" not in dom

    shot = tmp_path / "login.png"
    run_chromium(
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={PHONE[0]},{PHONE[1]}",
        f"{base_url}/",
    )
    assert shot.exists() and shot.stat().st_size > 5000
    assert png_size(shot) == PHONE
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT_DIR / "login.png")


def test_logged_in_page_shows_the_fleet_on_a_phone(base_url, seeded, devtools):
    _, redis = seeded
    devtools.load(f"location.href = {json.dumps(base_url + '/')}")
    assert devtools.evaluate("!!document.querySelector('input[name=token]')")
    devtools.load(
        f"document.getElementById('token').value = {json.dumps(ADMIN)};"
        "document.querySelector('form.login').submit()"
    )

    cookies = devtools.call("Network.getCookies", urls=[base_url + "/"])["cookies"]
    [session] = [c for c in cookies if c["name"] == "session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert devtools.evaluate("document.cookie") == ""  # HttpOnly: not readable by scripts

    text = devtools.evaluate("document.body.innerText")
    for expected in (
        "host-a",
        "host-b",
        "web",
        "container-web.service",
        "registry.example.com/team/web:1.0",
        "podman-kube@-etc-containers-kube-api.yaml.service",
        REASON_FAILED,
        "Log out",
    ):
        assert expected in text, expected
    badges = devtools.evaluate(
        "[...document.querySelectorAll('#updates .badge')].map(b => b.textContent)"
    )
    assert {"updated", "failed", "rolled back", "queued"} <= set(badges)
    colors = devtools.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.badge')].map("
        "b => [b.textContent, getComputedStyle(b).backgroundColor]))"
    )
    assert len({colors[state] for state in ("updated", "failed", "rolled back", "queued")}) == 4
    failed_section = devtools.evaluate("document.getElementById('failed').innerText")
    assert REASON_FAILED in failed_section and "team/api:2.1" in failed_section

    # Readable on a phone: nothing wider than the screen, text no smaller than 12 px.
    assert devtools.evaluate("document.documentElement.scrollWidth") <= PHONE[0]
    smallest = devtools.evaluate(
        "Math.min(...[...document.querySelectorAll('body *')]"
        ".filter(e => e.childElementCount === 0 && e.textContent.trim())"
        ".map(e => parseFloat(getComputedStyle(e).fontSize)))"
    )
    assert smallest >= 12

    shot = save_screenshot(devtools, "page-phone.png")
    assert png_size(shot) == (PHONE[0] * 2, PHONE[1] * 2)
    assert shot.stat().st_size > 20000
    save_screenshot(devtools, "page-phone-full.png", full_page=True)

    # The page refreshes itself, keeping the session: jobs worked meanwhile show up.
    queued_badges = "[...document.querySelectorAll('#updates .state-queued')].length"
    assert devtools.evaluate(queued_badges) == 5  # host-b's four jobs and host-a's last one
    work(redis, "host-b")
    devtools.events.clear()
    devtools.wait_event("Page.loadEventFired", timeout=20)
    assert devtools.evaluate(queued_badges) == 1
    assert "Log out" in devtools.evaluate("document.body.innerText")

    devtools.load("document.querySelector('form.logout').submit()")
    assert devtools.evaluate("!!document.querySelector('input[name=token]')")
    assert "host-a" not in devtools.evaluate("document.body.innerText")
