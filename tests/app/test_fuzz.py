"""Fuzzing every source through the one webhook route, on a real Redis, with hypothesis.

Real samples from tests/payloads, mutated (strings, numbers, nesting, types, lone surrogates,
NaN, duplicate keys), raw bytes, form, gzip and chunked bodies; sent authenticated (signed
after mutation) and not. Whatever comes: never a 5xx, always a JSON answer, no job queued for a
delivery that was refused or not authenticated. The long run is bench/fuzz_edge.py.
"""

from __future__ import annotations

import gzip
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.app.test_sources_over_http import CASES, SECRET, signed
from webhook.app import create_app
from workers.hosts import register_host
from workers.settings import Settings

SOURCES = sorted(CASES)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE_STRINGS = st.sampled_from(
    [
        "",
        "\ud800",
        "x\udfffy",
        "\x00",
        "\x1b[2J\r\n",
        "a" * 70_000,
        "../../etc/passwd",
        "sha256:" + "z" * 64,
        "🐳" * 50,
        "registry.example.com:99999/x",
        "UPPER/Case:TAG",
        "\u2028",
    ]
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    HOSTILE_STRINGS,
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def mutate(value: Any, draw: Any, depth: int = 0) -> Any:
    """``value`` with some of its parts replaced, dropped, retyped or nested deeper."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            choice = draw(st.integers(0, 9))
            if choice == 0:
                continue  # a field missing
            if choice == 1:
                out[key] = draw(JSON_VALUES)  # a field of another type
            else:
                out[key] = mutate(item, draw, depth + 1)
        return out
    if isinstance(value, list):
        items = [mutate(item, draw, depth + 1) for item in value]
        if items and draw(st.booleans()):
            items = items * draw(st.integers(1, 300))  # a huge array
        return items
    if isinstance(value, str):
        return draw(st.one_of(st.just(value), HOSTILE_STRINGS, st.text(max_size=30)))
    return draw(st.one_of(st.just(value), LEAVES))


def encode(value: Any, draw: Any) -> bytes:
    """JSON as a sender might (mis)write it: NaN, duplicate keys, deep nesting."""
    text = json.dumps(value, allow_nan=True)
    trick = draw(st.integers(0, 5))
    if trick == 0 and text.startswith("{") and len(text) > 2:
        text = '{"events": [], ' + text[1:]  # a duplicate key, if the body has one
    elif trick == 1:
        depth = draw(st.integers(1, 5000))
        text = "[" * depth + text + "]" * depth
    elif trick == 2:
        text = text.replace("1", "NaN", 1)
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture
def app(redis_url, redis):
    register_host(redis, "host-a")
    endpoints = {
        name: {"source": name, "secret": SECRET}
        | ({"registry": "zot.example.com"} if name in ("zot", "artifactory", "nexus") else {})
        for name in CASES
    }
    return create_app(redis_url=redis_url, webhook_token=None, endpoints=endpoints)


def send(app, redis, source: str, body: bytes, authenticated: bool, content_type: str, **kw):
    """Post ``body``; check the answer is JSON and not a 5xx; the number of jobs it made."""
    _, headers, suffix, _ = CASES[source]
    headers = signed(source, body, headers) if authenticated else {}
    if not authenticated:
        suffix = ""
    before = len(redis.keys("rq:job:*"))
    response = app.test_client().post(
        f"/v1/webhooks/{source}{suffix}",
        data=body,
        headers={"Content-Type": content_type, **headers, **kw.pop("headers", {})},
        **kw,
    )
    assert response.status_code < 500, (source, body[:300], response.get_data()[:300])
    assert response.is_json, response.get_data()[:300]
    made = len(redis.keys("rq:job:*")) - before
    if not authenticated:
        # A body over the limit is refused before it is read, so before its sender is known.
        too_large = len(body) > Settings.max_body_bytes and response.status_code == 413
        assert response.status_code == 401 or too_large, response.json
    if response.status_code >= 300:
        assert made == 0, (response.status_code, response.json)
    return response, made


@FUZZ
@given(data=st.data(), source=st.sampled_from(SOURCES), authenticated=st.booleans())
def test_mutated_samples_never_fail_the_server(app, redis, data, source, authenticated):
    sample = json.loads(CASES[source][0])
    body = encode(mutate(sample, data.draw), data.draw)
    send(app, redis, source, body, authenticated, "application/json")


@FUZZ
@given(
    source=st.sampled_from(SOURCES),
    body=st.one_of(
        st.binary(max_size=2000),
        st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"\xff\xfe\x00", b"\xed\xa0\x80", b"[" * 200_000, b"\x1f\x8b\x08"]),
    ),
    authenticated=st.booleans(),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
    ),
)
def test_raw_bytes_never_fail_the_server(app, redis, source, body, authenticated, content_type):
    send(app, redis, source, body, authenticated, content_type)


@FUZZ
@given(data=st.data(), source=st.sampled_from(SOURCES), how=st.sampled_from(["form", "gzip"]))
def test_form_and_gzip_bodies_never_fail_the_server(app, redis, data, source, how):
    sample = json.loads(CASES[source][0])
    payload = encode(mutate(sample, data.draw), data.draw)
    if how == "form":
        from urllib.parse import quote_from_bytes

        body = b"payload=" + quote_from_bytes(payload).encode()
        send(app, redis, source, body, True, "application/x-www-form-urlencoded")
    else:
        body = gzip.compress(payload)
        send(
            app, redis, source, body, True, "application/json", headers={"Content-Encoding": "gzip"}
        )


@FUZZ
@given(data=st.data(), source=st.sampled_from(SOURCES))
def test_chunked_bodies_never_fail_the_server(app, redis, data, source):
    # A body without a length, read to its end as the server's chunked decoding gives it
    # (malformed chunked framing itself is tested under gunicorn: test_slow_clients.py).
    sample = json.loads(CASES[source][0])
    payload = encode(mutate(sample, data.draw), data.draw)
    send(
        app,
        redis,
        source,
        payload,
        True,
        "application/json",
        headers={"Transfer-Encoding": "chunked"},
    )


def test_nan_and_infinity_are_bodies_like_any_other(app, redis):
    body = json.dumps({"events": [{"action": "push", "target": {"size": math.nan}}]}).encode()
    response, made = send(app, redis, "distribution", body, True, "application/json")
    assert response.status_code in (200, 400) and made == 0  # a push without a manifest: ignored
