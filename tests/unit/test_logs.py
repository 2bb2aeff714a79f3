"""Log lines: fixed fields as JSON or text, context from the job, and never a secret."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.test_webhook_app import TOKEN, envelope, manifest_push, post
from tests.conftest import free_port
from webhook.app import create_app
from workers.hosts import register_host
from workers.logs import (
    FIELDS,
    JsonFormatter,
    RedactSecrets,
    TextFormatter,
    log_context,
    redact_secrets,
    setup_logging,
)
from workers.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "c" * 64


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging reconfigures the process's loggers; put them back after each test."""
    names = ["", "gunicorn.error", "gunicorn.access"]
    saved = {
        name: (
            logging.getLogger(name).level,
            list(logging.getLogger(name).handlers),
            logging.getLogger(name).propagate,
        )
        for name in names
    }
    yield
    for name, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def record(msg: str = "restarted %s", *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("podhook.test")
    return logger.makeRecord(
        "podhook.test", logging.INFO, __file__, 1, msg, args or ("web.service",), None, extra=extra
    )


def test_json_lines_carry_ts_level_logger_msg_and_every_fixed_field():
    line = json.loads(JsonFormatter().format(record(unit="web.service", state="updated")))
    assert list(line)[:4] == ["ts", "level", "logger", "msg"]
    assert line["level"] == "INFO" and line["logger"] == "podhook.test"
    assert line["msg"] == "restarted web.service"
    assert line["ts"].endswith("+00:00")
    assert {key: line[key] for key in FIELDS} == {
        "source": None,
        "delivery": None,
        "job": None,
        "host": None,
        "unit": "web.service",
        "image": None,
        "digest": None,
    }
    assert line["state"] == "updated"  # other extras follow the fixed fields


def test_the_job_context_fills_the_fields_and_a_line_may_override_them():
    with log_context(job="push-1", host="web-1", image="r.example.com/app:1", digest=DIGEST):
        with log_context(unit="web.service", delivery=None):
            inner = json.loads(JsonFormatter().format(record()))
            overridden = json.loads(JsonFormatter().format(record(host="other")))
        outer = json.loads(JsonFormatter().format(record()))
    after = json.loads(JsonFormatter().format(record()))
    assert (inner["job"], inner["host"], inner["unit"], inner["digest"]) == (
        "push-1",
        "web-1",
        "web.service",
        DIGEST,
    )
    assert overridden["host"] == "other"
    assert outer["unit"] is None and outer["job"] == "push-1"
    assert all(after[key] is None for key in FIELDS)


def test_text_lines_append_the_known_fields_in_their_fixed_order():
    with log_context(host="web-1", job="push-1"):
        text = TextFormatter().format(record(unit="web.service", image="r.example.com/app:1"))
    assert text.endswith(
        "podhook.test: restarted web.service job=push-1 host=web-1 unit=web.service "
        "image=r.example.com/app:1"
    )
    assert TextFormatter().format(record()).endswith("podhook.test: restarted web.service")
    assert 'unit="a b"' in TextFormatter().format(record(unit="a b"))


def test_a_traceback_stays_below_the_fields():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failing = logging.getLogger("podhook.test").makeRecord(
            "podhook.test",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            sys.exc_info(),
            extra={"host": "web-1"},
        )
    first, *rest = TextFormatter().format(failing).splitlines()
    assert first.endswith("failed host=web-1") and rest[0].startswith("Traceback")
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(failing))["exc"]


def test_webhook_url_secrets_are_redacted_from_any_line():
    access = logging.getLogger("gunicorn.access").makeRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        '%(h)s "%(r)s" %(s)s',
        (
            {
                "h": "10.0.0.1",
                "r": "POST /v1/webhooks/quay/hunter2?token=hunter3 HTTP/1.1",
                "s": "202",
            },
        ),
        None,
    )
    assert RedactSecrets().filter(access) is True
    message = access.getMessage()
    assert "hunter2" not in message and "hunter3" not in message
    assert message == '10.0.0.1 "POST /v1/webhooks/quay/***?token=*** HTTP/1.1" 202'
    plain = record("delivery endpoint=%s", "quay")
    RedactSecrets().filter(plain)
    assert plain.getMessage() == "delivery endpoint=quay" and plain.args == ("quay",)


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ("POST /v1/webhooks/hub%2Fhunter2 HTTP/1.1", "POST /v1/webhooks/hub/*** HTTP/1.1"),
        ("POST /v1%2Fwebhooks/hub/hunter2 HTTP/1.1", "POST /v1/webhooks/hub/*** HTTP/1.1"),
        ("POST /v1/webhooks/hub/%68unter2 HTTP/1.1", "POST /v1/webhooks/hub/*** HTTP/1.1"),
        ("POST /v1/webhooks/hub/hunter%252F2 HTTP/1.1", "POST /v1/webhooks/hub/*** HTTP/1.1"),
        ("POST //v1//webhooks/hub/hunter2 HTTP/1.1", "POST /v1/webhooks/hub/*** HTTP/1.1"),
        ("POST /V1/WebHooks/hub/hunter2 HTTP/1.1", "POST /V1/WebHooks/hub/*** HTTP/1.1"),
        (
            "POST /v1/webhooks/hub?%74oken=hunter2 HTTP/1.1",
            "POST /v1/webhooks/hub?token=*** HTTP/1.1",
        ),
        ("GET /x?a=1&TOKEN=hunter2&b=2", "GET /x?a=1&TOKEN=***&b=2"),
        ("Location: http://h//v1/webhooks/hub/hunter2", "Location: http:/h/v1/webhooks/hub/***"),
        ("GET /healthz HTTP/1.1", "GET /healthz HTTP/1.1"),
        ("POST /v1/webhooks/hub HTTP/1.1", "POST /v1/webhooks/hub HTTP/1.1"),
    ],
)
def test_url_secrets_are_redacted_however_encoded(line, redacted):
    assert redact_secrets(line) == redacted


def test_text_lines_escape_control_characters_and_surrogates():
    line = record("delivery %s", "a\x1b[31m\nINFO forged\u2028\ud800", delivery="d\x07\ud800")
    text = TextFormatter().format(line)
    assert "\n" not in text and "\x1b" not in text and "\ud800" not in text
    assert "a\\x1b[31m\\x0aINFO forged\\u2028\\ud800" in text
    assert 'delivery="d\\u0007\\ud800"' in text
    text.encode("utf-8")  # writable to any UTF-8 stream


def test_json_lines_escape_what_json_leaves_raw():
    line = record("id %s", "\x85\u2028\ud800", delivery="\ud800")
    text = JsonFormatter().format(line)
    text.encode("utf-8")
    assert "\u2028" not in text and "\x85" not in text
    assert json.loads(text)["msg"] == "id \x85\u2028\ud800"


def test_log_format_setting_is_read_and_checked():
    assert load_settings({}).log_format == "text"
    assert load_settings({"PODHOOK_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings({"PODHOOK_LOG_FORMAT": "yaml"})


def test_a_real_delivery_logs_json_with_its_fields_and_no_secret(redis_url, redis, capsys):
    setup_logging(load_settings({"PODHOOK_LOG_FORMAT": "json"}))
    register_host(redis, "host-a")
    app = create_app(redis_url=redis_url, webhook_token=TOKEN)
    client = app.test_client()
    marker = "payload-marker-5678"
    event = manifest_push()
    event["actor"] = {"name": marker}
    assert post(client, envelope(event)).status_code == 202
    assert post(client, envelope(event), token="wrong-" + TOKEN).status_code == 401
    assert (
        post(
            client, b'{"events": [{"action": "push", "x": "' + marker.encode() + b'"}]}'
        ).status_code
        == 400
    )
    app.extensions["podhook"]["redis"].close()

    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert lines, "nothing was logged"
    assert TOKEN not in err and marker not in err
    delivered = next(line for line in lines if line["msg"].startswith("delivery endpoint="))
    assert delivered["level"] == "INFO" and delivered["logger"] == "podhook.webhook"
    assert delivered["source"] == "distribution"
    assert delivered["image"] == "127.0.0.1:5000/team/app:1.2"
    assert delivered["digest"] == DIGEST
    assert delivered["outcome"] == "queued" and delivered["queued"] == 1
    refused = next(line for line in lines if line["msg"].startswith("refused delivery"))
    assert refused["level"] == "WARNING" and refused["status"] == 401
    assert refused["source"] == "distribution"
    bad = next(line for line in lines if line["msg"].startswith("bad delivery"))
    assert bad["status"] == 400
    for line in lines:
        assert set(FIELDS) <= set(line)


def test_podhook_serve_logs_the_app_as_json_and_hides_url_secrets(redis_url, redis, tmp_path):
    """Under gunicorn, as deployed: the app's lines reach the log, access lines lose secrets."""
    register_host(redis, "host-a")
    port = free_port()
    secret = "url-secret-9f2c"
    config = tmp_path / "podhook.toml"
    config.write_text(
        f'[endpoints.hub]\nsource = "dockerhub"\nsecret = "{secret}"\nregistry = "docker.io"\n'
    )
    env = {
        **os.environ,
        "PODHOOK_REDIS_URL": redis_url,
        "PODHOOK_WEBHOOK_TOKEN": TOKEN,
        "PODHOOK_LOG_FORMAT": "json",
        "PODHOOK_CONFIG": str(config),
        "TMPDIR": str(tmp_path),  # where serve writes gunicorn's logging configuration
    }
    podhook = str(Path(sys.executable).parent / "podhook")
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        server = subprocess.Popen(
            [podhook, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            env=env,
            stdout=out,
            stderr=err,
            cwd=ROOT,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz", server)
            body = (ROOT / "tests/payloads/dockerhub/dockerhub.json").read_bytes()
            status = send(f"http://127.0.0.1:{port}/v1/webhooks/hub/{secret}", body)
            assert status == 202
            assert (
                send(f"http://127.0.0.1:{port}/v1/webhooks/hub?token=wrong-{secret}", body) == 401
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    output = stdout.read_text() + stderr.read_text()
    assert secret not in output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    delivered = [line for line in lines if line["msg"].startswith("delivery endpoint=hub")]
    assert len(delivered) == 1 and delivered[0]["source"] == "dockerhub"
    assert delivered[0]["image"].startswith("docker.io/")
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert any("/v1/webhooks/hub/***" in line["msg"] for line in access), access
    assert any("token=***" in line["msg"] for line in access), access
    assert any(line["logger"] == "gunicorn.error" for line in lines)


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, "podhook serve exited"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer in 30 s")


def send(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
