"""``podhook run``: a private Redis when none is configured, the webhook app and one worker."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.redis_connection import describe
from workers.settings import Settings

REDIS_MISSING = (
    "redis-server is not installed and PODHOOK_REDIS_URL is not set; "
    "install it with `apt-get install redis-server` or point PODHOOK_REDIS_URL at a Redis"
)


def _say(message: str) -> None:
    print(f"podhook: {message}", file=sys.stderr, flush=True)


def start_private_redis(state_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on a unix socket in ``state_dir`` with an append-only file.

    Returns the process and its URL. Raises RuntimeError when redis-server is missing or does
    not come up within ten seconds.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(REDIS_MISSING)
    socket_path = state_dir / "redis.sock"
    socket_path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "600",
            "--dir",
            str(state_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(state_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        # Its own session: Ctrl-C in the terminal must not stop Redis before the app and the
        # worker are done with it; run_all stops it last.
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start; see {state_dir / 'redis.log'}")
        time.sleep(0.05)
    return process, f"unix://{socket_path}"


def _webhook_token(settings: Settings, state_dir: Path) -> str | None:
    """The configured token, or one generated once and kept in the state directory."""
    if settings.webhook_token or settings.insecure:
        return settings.webhook_token
    token_file = state_dir / "webhook-token"
    if not token_file.exists():
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(32) + "\n")
        _say(f"generated a webhook token in {token_file} (set PODHOOK_WEBHOOK_TOKEN to choose one)")
    else:
        _say(f"webhook token from {token_file}")
    return token_file.read_text().strip()


def run_all(settings: Settings) -> int:
    """Run Redis (when needed), ``podhook serve`` and ``podhook worker`` until interrupted.

    Returns the exit status: 0 after Ctrl-C or SIGTERM, 1 when a part exits by itself.
    Raises RuntimeError when the private Redis cannot start.
    """
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    env = dict(os.environ)
    if settings.redis_url or settings.redis_sentinels:
        _say(f"using Redis at {describe(settings)}")  # the children read the same settings
    else:
        process, redis_url = start_private_redis(state_dir)
        children.append(("redis", process))
        _say(f"started a private Redis at {redis_url} (data in {state_dir})")
        env["PODHOOK_REDIS_URL"] = redis_url
    token = _webhook_token(settings, state_dir)
    if token:
        env["PODHOOK_WEBHOOK_TOKEN"] = token
    command = [sys.executable, "-m", "webhook.cli"]
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        children.append(("worker", subprocess.Popen([*command, "worker"], env=env)))
        children.append(
            ("webhook", subprocess.Popen([*command, "serve", "--bind", settings.bind], env=env))
        )
        _say(
            f"webhook app on http://{settings.bind}/v1/webhooks/<source>, worker for host "
            f"{settings.host_id}; Ctrl-C stops"
        )
        while not stopping:
            for name, child in children:
                if child.poll() is not None:
                    _say(f"{name} exited with status {child.returncode}; stopping")
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        _say("stopping")
        for _name, child in reversed(children):
            if child.poll() is None:
                child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
