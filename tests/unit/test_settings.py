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


# --- bounds of the numeric settings ------------------------------------------------------

# One value inside and values outside the bounds of every numeric setting; the inside value
# goes in with the defaults of the others, so it must keep job_timeout above a restart.
IN_AND_OUT_OF_RANGE = {
    "max_body_bytes": ("4096", ["1023", "0", str(64 * 1024 * 1024 + 1)]),
    "max_delivery_events": ("10000", ["0", "10001"]),
    "restart_timeout": ("0.5", ["0", "-1", "3600.5", "nan", "inf"]),
    "settle_seconds": ("0", ["-0.1", "601", "nan", "-inf"]),
    "job_retries": ("0", ["-1", "21"]),
    "job_timeout": ("3600", ["-1", "0", "59", "86401"]),
    "result_ttl": ("60", ["0", "59", str(365 * 24 * 3600 + 1)]),
    "audit_retention": ("86400", ["0", "-60", str(365 * 24 * 3600 + 1)]),
    "web_workers": ("64", ["0", "65"]),
    "reconcile_interval": ("0", ["-5", str(7 * 24 * 3600 + 1)]),
    "host_stale_after": ("60", ["59", "86401"]),
    "inventory_max_age": ("30", ["29", "86401"]),
    "redis_wait_replicas": ("1", ["-1", "101"]),
    "redis_wait_timeout": ("0.25", ["0", "-1", "10.5", "nan"]),
    "login_limit": ("1", ["0", "-1", "10001"]),
    "admin_token_limit": ("10000", ["0", "10001"]),
    "auth_limit_window": ("1", ["0", "86401"]),
    "session_lifetime": ("60", ["0", "59", str(7 * 24 * 3600 + 1)]),
    "clock_offset": ("-3600", ["nan", "inf", str(10 * 365 * 24 * 3600 + 1)]),
}


def numeric_fields() -> set[str]:
    from dataclasses import fields

    from workers.settings import Settings

    return {f.name for f in fields(Settings) if str(f.type) in ("int", "float")}


def test_every_numeric_setting_has_bounds_and_a_test():
    from workers.settings import BOUNDS

    assert numeric_fields() == set(BOUNDS) == set(IN_AND_OUT_OF_RANGE)


@pytest.mark.parametrize(("name", "good"), [(n, v[0]) for n, v in IN_AND_OUT_OF_RANGE.items()])
def test_a_value_in_range_is_accepted(name, good):
    settings = load_settings({f"PODHOOK_{name.upper()}": good})
    assert getattr(settings, name) == float(good)


@pytest.mark.parametrize(
    ("name", "bad"), [(n, bad) for n, v in IN_AND_OUT_OF_RANGE.items() for bad in v[1]]
)
def test_a_value_out_of_range_names_the_setting_the_range_and_the_value(name, bad):
    variable = f"PODHOOK_{name.upper()}"
    with pytest.raises(SettingsError, match=f"^{name} must be (between|more than) ") as caught:
        load_settings({variable: bad})
    message = str(caught.value)
    assert f"not {bad} " in message or f"not {float(bad)!r} " in message
    assert message.endswith(f"(from {variable})") and caught.value.setting == name


@pytest.mark.parametrize("name", sorted(IN_AND_OUT_OF_RANGE))
def test_a_non_number_names_the_variable(name):
    variable = f"PODHOOK_{name.upper()}"
    with pytest.raises(SettingsError, match=f"^{variable}: expected a (whole )?number"):
        load_settings({variable: "lots"})


@pytest.mark.parametrize("name", sorted(IN_AND_OUT_OF_RANGE))
@pytest.mark.parametrize("bad", ["600", True, None])
def test_an_override_that_is_not_a_number_names_the_field(name, bad):
    with pytest.raises(SettingsError, match=rf"^{name} must be a (whole )?number .*, not "):
        load_settings(overrides={name: bad})


def test_out_of_range_message_reads_well():
    with pytest.raises(SettingsError) as caught:
        load_settings({"PODHOOK_JOB_TIMEOUT": "-1"})
    assert str(caught.value) == (
        "job_timeout must be between 60 and 86400 seconds, not -1 (from PODHOOK_JOB_TIMEOUT)"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides={"restart_timeout": 0})
    assert (
        str(caught.value) == "restart_timeout must be more than 0 and at most 3600 seconds, not 0"
    )


def test_a_file_value_out_of_range_names_the_file_and_key(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text("result_ttl = 0\n")
    with pytest.raises(
        SettingsError, match=rf"^result_ttl must .*not 0 \(from {config}: result_ttl\)"
    ):
        load_settings({"PODHOOK_CONFIG": str(config)})


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("job_retries = true", "job_retries: expected a whole number, got True"),
        ("job_timeout = 1800.5", "job_timeout: expected a whole number, got 1800.5"),
        ("job_timeout = inf", "job_timeout: expected a whole number, got inf"),
        ("settle_seconds = nan", r"settle_seconds must be between 0 and 600 seconds, not nan"),
    ],
)
def test_file_values_that_are_not_counts_are_refused(tmp_path, line, named):
    config = tmp_path / "podhook.toml"
    config.write_text(line + "\n")
    with pytest.raises(SettingsError, match=named):
        load_settings({"PODHOOK_CONFIG": str(config)})


def test_whole_float_in_file_is_a_whole_number(tmp_path):
    config = tmp_path / "podhook.toml"
    config.write_text("job_timeout = 1800.0\n")
    assert load_settings({"PODHOOK_CONFIG": str(config)}).job_timeout == 1800


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ({"restart_timeout": 120, "settle_seconds": 5, "job_timeout": 126}, True),
        ({"restart_timeout": 120, "settle_seconds": 5, "job_timeout": 125}, False),
        ({"restart_timeout": 3600, "job_timeout": 600}, False),
    ],
)
def test_job_timeout_outlasts_a_restart_and_its_settle_window(overrides, accepted):
    if accepted:
        assert load_settings(overrides=overrides).job_timeout == overrides["job_timeout"]
    else:
        with pytest.raises(SettingsError, match="job_timeout must be more than restart_timeout"):
            load_settings(overrides=overrides)


def test_new_settings_have_their_defaults():
    settings = load_settings({})
    assert settings.reconcile_interval == 3600
    assert settings.host_stale_after == 150
    assert settings.inventory_max_age == 120


def test_new_settings_are_read_from_the_environment():
    settings = load_settings(
        {
            "PODHOOK_RECONCILE_INTERVAL": "0",
            "PODHOOK_HOST_STALE_AFTER": "300",
            "PODHOOK_INVENTORY_MAX_AGE": "600",
        }
    )
    assert settings.reconcile_interval == 0  # off
    assert settings.host_stale_after == 300 and settings.inventory_max_age == 600
    with pytest.raises(SettingsError, match="reconcile_interval must be between 0 .off. and"):
        load_settings({"PODHOOK_RECONCILE_INTERVAL": "-5"})
