"""Redis clients from the settings: URL or Sentinel, the retry that rides out a failover, and
the Sentinel settings' checks."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import SentinelConnectionPool

from tests.conftest import free_port
from workers.queueing import redis_from_settings
from workers.redis_connection import (
    RETRIED_ERRORS,
    RETRY_BUDGET,
    FailoverRetry,
    confirm_replicated,
    connect,
    describe,
)
from workers.settings import SettingsError, load_settings

SENTINELS = "10.0.0.1:26379, sentinel-b:26380,[fd00::3]:26381"


def test_sentinels_are_read_as_host_port_pairs():
    settings = load_settings({"PODHOOK_REDIS_SENTINELS": SENTINELS})
    assert settings.redis_sentinels == ["10.0.0.1:26379", "sentinel-b:26380", "[fd00::3]:26381"]
    assert settings.redis_master_name == "podhook" and settings.redis_wait_replicas == 0


@pytest.mark.parametrize("bad", ["sentinel-a", "sentinel-a:", ":26379", "a:0", "a:65536", "a:x"])
def test_a_sentinel_that_is_not_host_port_names_the_setting(bad):
    with pytest.raises(SettingsError, match=r"^redis_sentinels: expected host:port") as caught:
        load_settings({"PODHOOK_REDIS_SENTINELS": f"s1:26379,{bad}"})
    assert repr(bad) in str(caught.value) and "(from PODHOOK_REDIS_SENTINELS)" in str(caught.value)


def test_a_url_host_beside_sentinels_is_refused_without_showing_its_password():
    with pytest.raises(SettingsError, match=r"^redis_url must not name a host") as caught:
        load_settings(
            {
                "PODHOOK_REDIS_SENTINELS": SENTINELS,
                "PODHOOK_REDIS_URL": "redis://:hunter2@redis-1:6379/0",
            }
        )
    assert "hunter2" not in str(caught.value) and "(from PODHOOK_REDIS_URL)" in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PODHOOK_REDIS_SENTINEL_PASSWORD": "x"}, "^redis_sentinel_password is set but"),
        (
            {"PODHOOK_REDIS_SENTINELS": SENTINELS, "PODHOOK_REDIS_MASTER_NAME": "my master"},
            "^redis_master_name must be a word",
        ),
        (
            {"PODHOOK_REDIS_SENTINELS": SENTINELS, "PODHOOK_REDIS_URL": "unix:///run/r.sock"},
            "^redis_url must be redis:// or rediss://",
        ),
    ],
)
def test_sentinel_settings_that_cannot_work_are_refused(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_with_sentinels_the_url_gives_password_database_and_tls():
    settings = load_settings(
        {
            "PODHOOK_REDIS_SENTINELS": SENTINELS,
            "PODHOOK_REDIS_MASTER_NAME": "queue",
            "PODHOOK_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
            "PODHOOK_REDIS_URL": "rediss://podhook:data-secret@/3",
        }
    )
    client = connect(settings, role="worker")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "queue"
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("podhook", "data-secret", 3)
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert addresses == [("10.0.0.1", 26379), ("sentinel-b", 26380), ("fd00::3", 26381)]
    assert all(
        s.connection_pool.connection_kwargs["password"] == "sentinel-secret" for s in sentinels
    )
    assert "secret" not in describe(settings) and "queue" in describe(settings)


def test_the_app_keeps_short_timeouts_and_workers_ride_out_a_failover(redis_url):
    settings = load_settings({"PODHOOK_REDIS_URL": redis_url})
    app = connect(settings, role="app").connection_pool.connection_kwargs
    worker = redis_from_settings(settings).connection_pool.connection_kwargs
    assert (app["socket_connect_timeout"], app["socket_timeout"]) == (3.0, 5.0)
    assert worker["socket_timeout"] is None
    assert app["retry"].budget == RETRY_BUDGET["app"] < worker["retry"].budget
    waiting = load_settings(
        {
            "PODHOOK_REDIS_URL": redis_url,
            "PODHOOK_REDIS_WAIT_REPLICAS": "1",
            "PODHOOK_REDIS_WAIT_TIMEOUT": "8",
        }
    )
    # WAIT blocks on the server for its timeout: the app's read must outlast it.
    assert connect(waiting, role="app").connection_pool.connection_kwargs["socket_timeout"] > 8


def test_failover_retry_retries_until_the_command_goes_through():
    calls = []

    def command():
        calls.append(1)
        if len(calls) < 4:
            raise RedisConnectionError("primary gone")
        return "OK"

    failures = []
    assert FailoverRetry(budget=30).call_with_retry(command, failures.append) == "OK"
    assert len(calls) == 4 and len(failures) == 3


def test_failover_retry_gives_up_with_the_last_error_once_its_budget_is_spent():
    calls = []

    def command():
        calls.append(1)
        raise RedisConnectionError(f"attempt {len(calls)}")

    with pytest.raises(RedisConnectionError) as caught:
        FailoverRetry(budget=0.3).call_with_retry(command, lambda error: None)
    assert len(calls) > 1 and str(caught.value) == f"attempt {len(calls)}"


def test_without_wait_replicas_nothing_is_asked_of_redis():
    port = free_port()  # nothing listens: any command would fail
    settings = load_settings({"PODHOOK_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert confirm_replicated(connect(settings, role="app"), settings) == 0


def test_the_app_does_not_wait_twice_on_a_redis_that_hangs():
    calls = []

    def command():
        calls.append(1)
        raise RedisTimeoutError("no answer")

    with pytest.raises(RedisTimeoutError):
        FailoverRetry(budget=30, errors=RETRIED_ERRORS["app"]).call_with_retry(
            command, lambda error: None
        )
    assert len(calls) == 1
