"""deploy/ha/compose.yaml: a valid compose file whose podhook services read valid settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.unit.test_deploy_files import compose_errors
from workers.settings import load_settings

HA_COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "ha" / "compose.yaml"


def load() -> dict:
    return yaml.safe_load(HA_COMPOSE.read_text())


def test_ha_compose_file_follows_the_compose_specification():
    assert compose_errors(load()) == []


def test_three_sentinels_watch_the_primary_the_replica_follows():
    services = load()["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in sentinels:
        script = services[name]["command"][-1]
        assert "sentinel monitor podhook redis-1 6379 2" in script
    assert "--replicaof redis-1 6379" in services["redis-2"]["command"][-1]


def test_podhook_services_read_settings_that_load():
    services = load()["services"]
    for name in ("webhook", "worker"):
        environment = {
            key: str(value).replace("${REDIS_PASSWORD}", "secret")
            for key, value in services[name]["environment"].items()
            if "${PODHOOK_" not in str(value)
        }
        settings = load_settings(environment)
        assert settings.redis_sentinels == [f"sentinel-{i}:26379" for i in (1, 2, 3)]
        assert settings.redis_master_name == "podhook"
    assert (
        load_settings(
            {k: str(v) for k, v in services["webhook"]["environment"].items() if "${" not in str(v)}
        ).redis_wait_replicas
        == 1
    )
