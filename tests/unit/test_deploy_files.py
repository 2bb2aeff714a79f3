"""The deployment files: compose.yaml, Containerfile, deploy/systemd units and deploy/quadlet."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from workers.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
CONTAINERFILE = ROOT / "Containerfile"
SYSTEMD = ROOT / "deploy" / "systemd"
QUADLET = ROOT / "deploy" / "quadlet"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"

# Where docs/deploy.md and the units install the console script.
INSTALLED_PODHOOK = "/opt/podhook/venv/bin/podhook"
PODMAN_SOCKET = "/run/podman/podman.sock"
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"

# Every variable load_settings() reads: PODHOOK_CONFIG and one per setting but `endpoints`,
# which only the TOML file can give.
SETTING_VARIABLES = {"PODHOOK_CONFIG"} | {
    f"PODHOOK_{f.name.upper()}" for f in fields(Settings) if f.name != "endpoints"
}
PODHOOK_VARIABLE = re.compile(r"\bPODHOOK_[A-Z0-9_]*[A-Z0-9]\b")


def key_set(text: str) -> set[str]:
    """The whitespace-separated words of ``text``."""
    return set(text.split())


# Keys of podman-systemd.unit(5) (Podman 5.4): a key outside these is a typo that Quadlet
# refuses, and the generator then produces no service at all.
QUADLET_KEYS = {
    "Container": key_set(
        """AddCapability AddDevice AddHost Annotation AutoUpdate CgroupsMode ContainerName
        ContainersConfModule DNS DNSOption DNSSearch DropCapability Entrypoint Environment
        EnvironmentFile EnvironmentHost Exec ExposeHostPort GIDMap GlobalArgs Group GroupAdd
        HealthCmd HealthInterval HealthLogDestination HealthMaxLogCount HealthMaxLogSize
        HealthOnFailure HealthRetries HealthStartPeriod HealthStartupCmd HealthStartupInterval
        HealthStartupRetries HealthStartupSuccess HealthStartupTimeout HealthTimeout HostName IP
        IP6 Image Label LogDriver LogOpt Mask Mount Network NetworkAlias NoNewPrivileges Notify
        PidsLimit Pod PodmanArgs PublishPort Pull ReadOnly ReadOnlyTmpfs Rootfs RunInit
        SeccompProfile Secret SecurityLabelDisable SecurityLabelFileType SecurityLabelLevel
        SecurityLabelNested SecurityLabelType ShmSize StartWithPod StopSignal StopTimeout
        SubGIDMap SubUIDMap Sysctl Timezone Tmpfs UIDMap Ulimit Unmask User UserNS Volume
        WorkingDir"""
    ),
    "Network": key_set(
        """ContainersConfModule DNS DisableDNS Driver Gateway GlobalArgs IPAMDriver IPRange IPv6
        Internal Label NetworkName Options PodmanArgs Subnet"""
    ),
    "Volume": key_set(
        """ContainersConfModule Copy Device Driver GlobalArgs Group Image Label Options
        PodmanArgs Type User VolumeName"""
    ),
}
QUADLET_SECTION = {".container": "Container", ".network": "Network", ".volume": "Volume"}
QUADLET_GENERATORS = (
    os.environ.get("PODHOOK_QUADLET", ""),
    "/usr/libexec/podman/quadlet",
    "/usr/lib/podman/quadlet",
)

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """The sections of a systemd-style unit file, each a list of (key, value) in file order.

    Follows systemd.syntax(7): '#' and ';' start comments, a trailing backslash continues the
    line, repeated sections merge. Raises ValueError naming a line that is none of these.
    """
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or current is None or " " in key.strip():
            raise ValueError(f"line {number} is not 'Key=value' inside a section: {raw!r}")
        current.append((key.strip(), value.strip()))
    if pending:
        raise ValueError("the last line ends with a continuation backslash")
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of ``key`` in ``section``, in order."""
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str | None:
    """The effective (last) value of ``key`` in ``section``, or None."""
    found = values(unit, section, key)
    return found[-1] if found else None


def words(unit: Unit, section: str, key: str) -> list[str]:
    """The space-separated list that all the ``key`` lines of ``section`` add up to."""
    return [word for line in values(unit, section, key) for word in line.split()]


def environment(unit: Unit, section: str) -> dict[str, str]:
    """The Environment= assignments of ``section`` (one per line, no quoting used here)."""
    pairs = (line.partition("=") for line in values(unit, section, "Environment"))
    return {name: setting for name, _, setting in pairs}


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def load_quadlet(name: str) -> Unit:
    return parse_unit((QUADLET / name).read_text())


def load_systemd(name: str) -> Unit:
    return parse_unit((SYSTEMD / name).read_text())


def deploy_files() -> list[Path]:
    return [
        COMPOSE,
        CONTAINERFILE,
        *sorted(SYSTEMD.glob("*.service")),
        *sorted(p for p in QUADLET.iterdir() if p.suffix in QUADLET_SECTION),
        ROOT / "docs" / "deploy.md",
    ]


# --- compose.yaml -------------------------------------------------------------------------


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # It names draft-07 by an https URL that jsonschema does not look up by itself.
    assert "draft-07" in schema["$schema"]
    validator = Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(load_compose()) == []


def test_compose_schema_catches_a_misspelt_key() -> None:
    document = copy.deepcopy(load_compose())
    document["services"]["worker"]["restart_policy"] = "always"
    document["services"]["webhook"]["healthcheck"]["intervall"] = "30s"
    errors = compose_errors(document)
    assert any("services/worker" in e and "restart_policy" in e for e in errors), errors
    assert any("services/webhook/healthcheck" in e and "intervall" in e for e in errors), errors


def test_compose_redis_persists_and_reports_health() -> None:
    document = load_compose()
    redis = document["services"]["redis"]
    assert redis["image"].rpartition(":")[2] == "7" and "redis" in redis["image"]
    assert " ".join(redis["command"]).endswith("--appendonly yes")
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in document["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_webhook_serves_on_8080_after_redis_is_healthy() -> None:
    webhook = load_compose()["services"]["webhook"]
    assert webhook["build"]["dockerfile"] == "Containerfile"
    assert webhook["command"] == ["serve"]
    assert "8080:8080" in webhook["ports"]
    assert webhook["environment"]["PODHOOK_REDIS_URL"] == "redis://redis:6379/0"
    assert webhook["environment"]["PODHOOK_WEBHOOK_TOKEN"].startswith("${PODHOOK_WEBHOOK_TOKEN:?")
    assert any("/healthz" in part for part in webhook["healthcheck"]["test"])
    assert webhook["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_worker_reaches_the_hosts_podman_and_system_bus() -> None:
    services = load_compose()["services"]
    worker = services["worker"]
    assert worker["image"] == services["webhook"]["image"]
    assert worker["command"] == ["worker"]
    assert f"{PODMAN_SOCKET}:{PODMAN_SOCKET}" in worker["volumes"]
    assert f"{SYSTEM_BUS_SOCKET}:{SYSTEM_BUS_SOCKET}" in worker["volumes"]
    env = worker["environment"]
    assert env["PODHOOK_PODMAN_URL"] == f"unix://{PODMAN_SOCKET}"
    assert env["PODHOOK_SYSTEMD_BUS"] == "system"
    assert env["PODHOOK_HOST_ID"].startswith("${PODHOOK_HOST_ID:?")
    assert worker["user"].split(":")[0] in ("0", "root")
    assert worker["restart"] in ("always", "unless-stopped", "on-failure")
    # `--scale worker=N` refuses a fixed container name.
    assert "container_name" not in worker


# --- Containerfile --------------------------------------------------------------------------


def containerfile_stages() -> list[list[tuple[str, str]]]:
    """The Containerfile's stages, each a list of (INSTRUCTION, arguments)."""
    stages: list[list[tuple[str, str]]] = [[]]
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", CONTAINERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def test_containerfile_builds_pygobject_and_ships_only_its_runtime_libraries() -> None:
    preamble, builder, final = containerfile_stages()
    assert ("ARG", "PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm") in preamble
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    build_commands = " ".join(a for i, a in builder if i == "RUN")
    for package in ("libgirepository1.0-dev", "libcairo2-dev", "pkg-config", "gcc"):
        assert package in build_commands.split()
    assert "pip install /src" in build_commands
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    runtime_commands = " ".join(a for i, a in final if i == "RUN").split()
    for package in ("gir1.2-glib-2.0", "libgirepository-1.0-1", "libcairo2"):
        assert package in runtime_commands
    assert not any(p.endswith("-dev") or p == "gcc" for p in runtime_commands)


def test_containerfile_runs_podhook_unprivileged_by_default() -> None:
    final = dict(containerfile_stages()[-1])
    assert final["USER"] not in ("root", "0")
    assert json.loads(final["ENTRYPOINT"]) == ["podhook"]
    assert json.loads(final["CMD"]) == ["serve"]
    assert final["EXPOSE"] == "8080"
    assert "org.opencontainers.image.title=" in final["LABEL"]


def test_containerfile_copies_sources_the_ignore_file_keeps() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".pytest_cache", ".env"} <= ignored
    copied = [
        source
        for instruction, arguments in containerfile_stages()[1]
        if instruction == "COPY"
        for source in arguments.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source not in ignored, source


# --- PODHOOK_* variables everywhere ---------------------------------------------------------


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_podhook_variable_is_a_real_setting(path: Path) -> None:
    unknown = set(PODHOOK_VARIABLE.findall(path.read_text())) - SETTING_VARIABLES
    assert not unknown, f"{path.name} names variables podhook does not read: {sorted(unknown)}"


def test_the_deploy_files_set_podhook_variables_at_all() -> None:
    found = {v for p in deploy_files()[:-1] for v in PODHOOK_VARIABLE.findall(p.read_text())}
    expected = {"PODHOOK_REDIS_URL", "PODHOOK_WEBHOOK_TOKEN", "PODHOOK_PODMAN_URL"}
    assert expected | {"PODHOOK_SYSTEMD_BUS", "PODHOOK_HOST_ID"} <= found


def fixed_settings() -> list[dict[str, str]]:
    """The literal PODHOOK_* values each service of the deploy files sets."""
    found = []
    for service in load_compose()["services"].values():
        env = service.get("environment", {})
        found.append({k: str(v) for k, v in env.items() if "${" not in str(v)})
    units = [load_systemd(p.name) for p in SYSTEMD.glob("*.service")]
    found += [environment(u, "Service") for u in units]
    found += [environment(load_quadlet(p.name), "Container") for p in QUADLET.glob("*.container")]
    return [{k: v for k, v in env.items() if k.startswith("PODHOOK_")} for env in found]


def test_the_values_the_deploy_files_set_are_accepted_by_load_settings() -> None:
    checked = 0
    for env in fixed_settings():
        load_settings(environ={k: v for k, v in env.items() if "%" not in v})
        checked += len(env)
    assert checked >= 8


# --- systemd units --------------------------------------------------------------------------


SYSTEMD_UNITS = {"podhook-webhook.service": "serve", "podhook-worker@.service": "worker"}


def test_the_systemd_units_are_the_webhook_and_a_worker_template() -> None:
    assert sorted(p.name for p in SYSTEMD.glob("*.service")) == sorted(SYSTEMD_UNITS)


@pytest.mark.parametrize("name", sorted(SYSTEMD_UNITS))
def test_systemd_unit_runs_the_installed_podhook(name: str) -> None:
    unit = load_systemd(name)
    assert value(unit, "Unit", "Description")
    assert value(unit, "Service", "ExecStart") == f"{INSTALLED_PODHOOK} {SYSTEMD_UNITS[name]}"
    assert "-/etc/podhook/podhook.env" in values(unit, "Service", "EnvironmentFile")
    # A worker that ends by itself (Redis gone for a minute) must come back, even exiting 0.
    assert value(unit, "Service", "Restart") == ("always" if "worker" in name else "on-failure")
    assert {"network-online.target", "redis-server.service"} <= set(words(unit, "Unit", "After"))
    assert "network-online.target" in words(unit, "Unit", "Wants")
    assert "multi-user.target" in words(unit, "Install", "WantedBy")


def test_systemd_worker_keeps_the_podman_socket_and_the_system_bus_reachable() -> None:
    unit = load_systemd("podhook-worker@.service")
    assert "podman.socket" in words(unit, "Unit", "After")
    assert "podman.socket" in words(unit, "Unit", "Wants")
    env = environment(unit, "Service")
    assert env["PODHOOK_SYSTEMD_BUS"] == "system"
    assert env["PODHOOK_PODMAN_URL"] == f"unix://{PODMAN_SOCKET}"
    # Root on the host's terms: no user namespace, no other user.
    assert value(unit, "Service", "User") in (None, "root", "0")
    assert value(unit, "Service", "DynamicUser") in (None, "no", "false")
    assert value(unit, "Service", "PrivateUsers") in (None, "no", "false")
    assert value(unit, "Service", "PrivateNetwork") in (None, "no", "false")
    families = words(unit, "Service", "RestrictAddressFamilies")
    assert not families or ("AF_UNIX" in families and not families[0].startswith("~"))
    hidden = words(unit, "Service", "InaccessiblePaths") + words(
        unit, "Service", "TemporaryFileSystem"
    )
    assert not any(SYSTEM_BUS_SOCKET.startswith(p) or PODMAN_SOCKET.startswith(p) for p in hidden)
    if value(unit, "Service", "ProtectSystem") == "strict":
        assert values(unit, "Service", "StateDirectory") or values(
            unit, "Service", "ReadWritePaths"
        )
    # SIGTERM to the RQ worker alone, so it finishes the job in hand.
    assert value(unit, "Service", "KillMode") == "mixed"


def run_systemd_analyze(tmp_path: Path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of ``units`` (name: text) written under ``tmp_path``."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed")
    paths = []
    for name, text in units.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    return subprocess.run(
        [binary, "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def units_with_a_fake_podhook(tmp_path: Path) -> dict[str, str]:
    # verify insists that ExecStart's program exists: stand in for the installed one.
    fake = tmp_path / "podhook"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    return {
        name: (SYSTEMD / name).read_text().replace(INSTALLED_PODHOOK, str(fake))
        for name in SYSTEMD_UNITS
    }


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    result = run_systemd_analyze(tmp_path, units_with_a_fake_podhook(tmp_path))
    complaints = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_systemd_analyze_would_report_a_misspelt_key(tmp_path: Path) -> None:
    units = units_with_a_fake_podhook(tmp_path)
    units["podhook-webhook.service"] = units["podhook-webhook.service"].replace(
        "Restart=on-failure", "Restart=on-failure\nRestartSecs=5s"
    )
    result = run_systemd_analyze(tmp_path, units)
    assert "RestartSecs" in result.stderr


# --- Quadlet --------------------------------------------------------------------------------


QUADLET_FILES = [
    "podhook.network",
    "podhook-redis.volume",
    "podhook-redis.container",
    "podhook-webhook.container",
    "podhook-worker.container",
]


def test_the_quadlet_files_are_all_there() -> None:
    present = sorted(p.name for p in QUADLET.iterdir() if p.suffix in QUADLET_SECTION)
    assert present == sorted(QUADLET_FILES)


@pytest.mark.parametrize("name", QUADLET_FILES)
def test_quadlet_file_uses_only_quadlet_keys(name: str) -> None:
    unit = load_quadlet(name)
    section = QUADLET_SECTION[Path(name).suffix]
    assert unit.get(section), f"{name} has no [{section}] section"
    unknown = {key for key, _ in unit[section]} - QUADLET_KEYS[section]
    assert not unknown, f"{name}: not Quadlet [{section}] keys: {sorted(unknown)}"
    assert value(unit, "Unit", "Description")


@pytest.mark.parametrize("name", [n for n in QUADLET_FILES if n.endswith(".container")])
def test_quadlet_container_references_exist(name: str) -> None:
    unit = load_quadlet(name)
    image = value(unit, "Container", "Image") or ""
    # Fully qualified: Quadlet units pull it, and podhook skips short names.
    first = image.split("/")[0]
    assert "/" in image and ("." in first or ":" in first or first == "localhost"), image
    assert value(unit, "Container", "Exec")
    for network in values(unit, "Container", "Network"):
        assert not network.endswith(".network") or (QUADLET / network).is_file(), network
    for volume in values(unit, "Container", "Volume"):
        source = volume.split(":")[0]
        assert not source.endswith(".volume") or (QUADLET / source).is_file(), source
    assert "multi-user.target" in words(unit, "Install", "WantedBy")


def test_quadlet_redis_persists_on_its_volume() -> None:
    redis = load_quadlet("podhook-redis.container")
    assert "--appendonly yes" in (value(redis, "Container", "Exec") or "")
    assert "podhook-redis.volume:/data" in values(redis, "Container", "Volume")
    assert value(redis, "Container", "HealthCmd")


def test_quadlet_webhook_and_worker_reach_redis_by_its_container_name() -> None:
    redis_name = value(load_quadlet("podhook-redis.container"), "Container", "ContainerName")
    for name in ("podhook-webhook.container", "podhook-worker.container"):
        unit = load_quadlet(name)
        url = environment(unit, "Container")["PODHOOK_REDIS_URL"]
        assert url == f"redis://{redis_name}:6379/0", name
        assert "podhook-redis.service" in words(unit, "Unit", "After")
        assert value(unit, "Container", "AutoUpdate") == "registry", name


def test_quadlet_webhook_publishes_8080_with_a_secret_token() -> None:
    webhook = load_quadlet("podhook-webhook.container")
    assert value(webhook, "Container", "Exec") == "serve"
    assert "8080:8080" in values(webhook, "Container", "PublishPort")
    assert "/healthz" in (value(webhook, "Container", "HealthCmd") or "")
    secret = value(webhook, "Container", "Secret") or ""
    assert "target=PODHOOK_WEBHOOK_TOKEN" in secret.split(",")


def test_quadlet_worker_reaches_the_hosts_podman_and_system_bus() -> None:
    worker = load_quadlet("podhook-worker.container")
    assert (value(worker, "Container", "Exec") or "").split()[0] == "worker"
    volumes = values(worker, "Container", "Volume")
    assert f"{PODMAN_SOCKET}:{PODMAN_SOCKET}" in volumes
    assert f"{SYSTEM_BUS_SOCKET}:{SYSTEM_BUS_SOCKET}" in volumes
    env = environment(worker, "Container")
    assert env["PODHOOK_PODMAN_URL"] == f"unix://{PODMAN_SOCKET}"
    assert env["PODHOOK_SYSTEMD_BUS"] == "system"
    assert env["PODHOOK_HOST_ID"] == "%H"  # systemd's host name, not the container's
    assert value(worker, "Container", "User") == "0"
    assert value(worker, "Container", "SecurityLabelDisable") == "true"
    assert "podman.socket" in words(worker, "Unit", "After")


def quadlet_generator() -> str:
    for candidate in QUADLET_GENERATORS:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Quadlet generator (Podman >= 4.4; or set PODHOOK_QUADLET to its path)")


def test_quadlet_generator_accepts_the_files(tmp_path: Path) -> None:
    generator = quadlet_generator()
    source, output = tmp_path / "source", tmp_path / "output"
    shutil.copytree(QUADLET, source)
    output.mkdir()
    result = subprocess.run(
        [generator, str(output)],
        env={**os.environ, "QUADLET_UNIT_DIRS": str(source)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = {p.name for p in output.glob("*.service")}
    expected = {"podhook-network.service", "podhook-redis-volume.service"} | {
        n.replace(".container", ".service") for n in QUADLET_FILES if n.endswith(".container")
    }
    assert generated == expected, result.stderr
    worker = parse_unit((output / "podhook-worker.service").read_text())
    command = value(worker, "Service", "ExecStart") or ""
    assert f"-v {PODMAN_SOCKET}:{PODMAN_SOCKET}" in command
    assert "--env PODHOOK_HOST_ID=%H" in command
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", *sorted(map(str, output.glob("*.service")))],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
