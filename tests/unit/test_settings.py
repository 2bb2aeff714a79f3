"""Settings: environment over TOML file over defaults, with errors that name the setting."""

import pytest

from workers.settings import SettingsError, load_settings


def test_environment_variables_are_read_and_converted():
    settings = load_settings(
        {
            "PODHOOK_REDIS_URL": "redis://r:6379/1",
            "PODHOOK_DRY_RUN": "yes",
            "PODHOOK_SYSTEMD_BUS": "user",
            "PODHOOK_HOST_ID": "web-1",
            "PODHOOK_SETTLE_SECONDS": "2.5",
            "PODHOOK_REGISTRY_ALIASES": "localhost:5000=registry.example.com, a=b",
        }
    )
    assert settings.redis_url == "redis://r:6379/1"
    assert settings.dry_run is True and settings.systemd_bus == "user"
    assert settings.host_id == "web-1" and settings.settle_seconds == 2.5
    assert settings.registry_aliases == {"localhost:5000": "registry.example.com", "a": "b"}


def test_toml_file_is_read_and_environment_wins(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text(
        'webhook_token = "from-file"\nhost_id = "file-host"\n'
        '[endpoints.hub]\nsource = "dockerhub"\nsecret = "x"\n'
    )
    settings = load_settings({"PODHOOK_CONFIG": str(config), "PODHOOK_HOST_ID": "env-host"})
    assert settings.webhook_token == "from-file" and settings.host_id == "env-host"
    assert settings.endpoints == {"hub": {"source": "dockerhub", "secret": "x"}}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PODHOOK_DRY_RUN": "maybe"}, "PODHOOK_DRY_RUN"),
        ({"PODHOOK_SYSTEMD_BUS": "session"}, "systemd_bus"),
        ({"PODHOOK_MAX_BODY_BYTES": "lots"}, "PODHOOK_MAX_BODY_BYTES"),
        ({"PODHOOK_REGISTRY_ALIASES": "nonsense"}, "PODHOOK_REGISTRY_ALIASES"),
        ({"PODHOOK_CONFIG": "/nonexistent/podhook.toml"}, "PODHOOK_CONFIG"),
        ({"PODHOOK_HOST_ID": "a b"}, "host_id"),
    ],
)
def test_bad_values_name_the_setting(environ, named):
    with pytest.raises(SettingsError, match=named):
        load_settings(environ)


def test_unknown_key_in_file_is_refused(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text("redis_ulr = 'typo'\n")
    with pytest.raises(SettingsError, match="redis_ulr"):
        load_settings({"PODHOOK_CONFIG": str(config)})


def test_secret_is_not_in_repr():
    assert "hunter2" not in repr(load_settings({"PODHOOK_WEBHOOK_TOKEN": "hunter2"}))


def test_redact_url_hides_passwords_only():
    from workers.settings import redact_url

    assert redact_url("rediss://:s3cret@redis:6380/0") == "rediss://:***@redis:6380/0"
    assert redact_url("redis://user:pw@h/0") == "redis://user:***@h/0"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert redact_url(None) == "(not set)"
    assert "s3cret" not in repr(load_settings({"PODHOOK_REDIS_URL": "redis://:s3cret@h/0"}))


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"nexus": {"source": "nexus"}}, "set registry"),
        ({"hub": {"source": "dockerhub", "insecure": "false"}}, "insecure must be true or false"),
        ({"hub": {"source": "dockerhub", "secret": 12345678}}, "secret must be a non-empty string"),
        ({"nx": {"source": "nexus", "registry": "https://nexus.example.com"}}, "not a host"),
        ({"nx": {"source": "nexus", "registry": "nexus.example.com/docker"}}, "not a host"),
        ({"x": {"source": "nosuch"}}, "unknown source 'nosuch'"),
        ({"x": {"source": "harbor", "secrte": "typo"}}, "unknown keys"),
    ],
)
def test_endpoint_tables_are_checked_at_start(table, named):
    from webhook.endpoints import EndpointConfigError, build_endpoints
    from webhook.sources import get_source, source_names

    names = source_names()
    with pytest.raises(EndpointConfigError, match=named):
        build_endpoints(
            table,
            source_names=names,
            default_secret="s",
            insecure=False,
            needs_registry={n for n in names if get_source(n).needs_registry},
        )
