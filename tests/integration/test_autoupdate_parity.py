"""`podhook reconcile` and `podman auto-update` on the same containers, on the real stack.

Both tools judge the same running containers (policies ``registry``, ``image`` and ``local``,
a reference pinned by digest, containers up to date and behind) in dry runs and must agree on
every row; then the real `podhook reconcile` updates what is behind, after which neither tool
finds anything pending.

Podman 4.3's auto-update connects to systemd even for ``--dry-run``, and as root it dials the
system manager's private socket, ``/run/systemd/private`` (go-systemd's
``NewSystemdConnectionContext``, called by Podman's pkg/systemd ``ConnectToDBUS``). There is no
system manager here: a fixture points that path at the harness's user manager for the test.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import run
from podhook_support import reconcile_here

pytestmark = pytest.mark.integration

HOST_ID = "parity-host"
# The fields both tools print; Container is "<short id> (<name>)" and so follows from these.
COMPARED = ("Unit", "Container", "ContainerID", "Image", "Policy", "Updated")


# --------------------------------------------------------------------------------------------
# the two tools


def podhook_reconcile(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`podhook reconcile` on this host: the stack's Podman socket and bus, no Redis."""
    return reconcile_here(stack, HOST_ID, *args)


def podman_autoupdate(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`podman auto-update` on the stack's storage (the CONTAINERS_* files of its service)."""
    return run(["podman", "auto-update", *args], stack.podman_env, timeout=300, check=False)


@pytest.fixture
def system_manager_socket(stack: Any) -> Iterator[Path]:
    """``/run/systemd/private`` linked to the stack's user manager's private socket for the
    test, and removed afterwards. Skips when that path is something else (a real system
    manager, another session's link): it is not this test's to replace."""
    try:
        with harness.system_manager_socket(stack) as target:
            yield target
    except harness.SocketTakenError as error:
        pytest.skip(str(error))


# --------------------------------------------------------------------------------------------
# comparing and showing their reports


def rows_by_name(output: str, names: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """A json report's rows for the containers in ``names``, keyed by ContainerName."""
    rows = {row["ContainerName"]: row for row in json.loads(output or "[]")}
    return {name: rows[name] for name in names if name in rows}


def differences(podman: Mapping[str, Mapping[str, str]], podhook: Mapping[str, Any]) -> list[str]:
    """Every row and field on which the two reports disagree, as readable lines."""
    found = []
    for name in sorted(set(podman) | set(podhook)):
        if name not in podman or name not in podhook:
            where = "podman auto-update" if name in podman else "podhook reconcile"
            found.append(f"{name}: only {where} reports it")
            continue
        for key in COMPARED:
            if podman[name].get(key) != podhook[name].get(key):
                found.append(
                    f"{name} {key}: podman {podman[name].get(key)!r}, "
                    f"podhook {podhook[name].get(key)!r}"
                )
    return found


def side_by_side(
    names: Mapping[str, str],
    podman: Mapping[str, Mapping[str, str]],
    podhook: Mapping[str, Mapping[str, str]],
) -> str:
    """One line per container: its policy label, then each tool's POLICY and UPDATED."""
    lines = [("CONTAINER", "LABEL", "PODMAN POLICY/UPDATED", "PODHOOK POLICY/UPDATED", "")]
    for name, label in names.items():
        left, right = podman.get(name, {}), podhook.get(name, {})
        cells = [f"{row.get('Policy', '-')}/{row.get('Updated', '-')}" for row in (left, right)]
        lines.append((name, label, *cells, "" if cells[0] == cells[1] else "<- differs"))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def show(title: str, result: subprocess.CompletedProcess[str], seconds: float) -> None:
    print(f"\n--- {title}: exit {result.returncode}, {seconds:.1f}s")
    print(result.stdout.rstrip() or "(no rows)")
    if result.stderr.strip():
        print(f"stderr: {result.stderr.strip()[-1500:]}")


def timed(action: Any, *args: Any) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = action(*args)
    return result, time.monotonic() - started


def compare(stack: Any, names: Mapping[str, str], phase: str) -> dict[str, dict[str, str]]:
    """Dry runs of both tools, as tables (printed) and as json (compared row by row); returns
    Podman's rows after asserting podhook's are the same."""
    podman_table, podman_seconds = timed(podman_autoupdate, stack, "--dry-run")
    podhook_table, podhook_seconds = timed(podhook_reconcile, stack, "--dry-run")
    show(f"{phase}: podman auto-update --dry-run", podman_table, podman_seconds)
    show(f"{phase}: podhook reconcile --dry-run", podhook_table, podhook_seconds)
    podman_json = podman_autoupdate(stack, "--dry-run", "--format", "json")
    podhook_json = podhook_reconcile(stack, "--dry-run", "--format", "json")
    assert (podman_json.returncode, podhook_json.returncode) == (0, 0), (
        f"podman: {podman_json.stderr}\npodhook: {podhook_json.stderr}"
    )
    podman_rows = rows_by_name(podman_json.stdout, names)
    podhook_rows = rows_by_name(podhook_json.stdout, names)
    print(f"\n--- {phase}: the same rows side by side (json --dry-run)")
    print(side_by_side(names, podman_rows, podhook_rows))
    assert set(podman_rows) == set(names), podman_json.stdout
    assert differences(podman_rows, podhook_rows) == []
    # The tables too, to the space (Podman orders its rows by a map walk: compare them sorted).
    assert (podman_table.returncode, podhook_table.returncode) == (0, 0)
    podman_header, *podman_lines = podman_table.stdout.splitlines()
    podhook_header, *podhook_lines = podhook_table.stdout.splitlines()
    assert podhook_header == podman_header
    assert sorted(podhook_lines) == sorted(podman_lines)
    # And a table of the user's: headers split at capitals, the same alignment.
    template = "table {{.ContainerName}}\\t{{.ContainerID}}\\t{{.Updated}}"
    podman_user, podman_seconds = timed(podman_autoupdate, stack, "--dry-run", "--format", template)
    podhook_user, podhook_seconds = timed(
        podhook_reconcile, stack, "--dry-run", "--format", template
    )
    show(
        f"{phase}: podman auto-update --dry-run --format '{template}'", podman_user, podman_seconds
    )
    show(
        f"{phase}: podhook reconcile --dry-run --format '{template}'", podhook_user, podhook_seconds
    )
    assert podhook_user.stdout.splitlines()[0] == podman_user.stdout.splitlines()[0]
    assert sorted(podhook_user.stdout.splitlines()) == sorted(podman_user.stdout.splitlines())
    return podman_rows


# --------------------------------------------------------------------------------------------
# the test


def test_podhook_reconcile_agrees_with_podman_autoupdate_then_updates_what_is_behind(
    stack, units, system_manager_socket
):
    stack.registry.configure(None)  # no notifications: only the two tools look at the registry
    pushed = {
        name: stack.build_and_push(f"parity/{name}", "1", marker=f"{name}-v1")
        for name in (
            "reg-behind",
            "reg-current",
            "image-behind",
            "local-behind",
            "local-current",
            "pinned",
        )
    }
    # Container name -> its io.containers.autoupdate label.
    names = {
        "reg-behind": "registry",
        "reg-current": "registry",
        "image-behind": "image",
        "local-behind": "local",
        "local-current": "local",
        "pinned": "registry",
    }
    for name, policy in names.items():
        image = pushed[name].pinned if name == "pinned" else pushed[name].ref
        units.container(name, image, autoupdate=policy)
    ids = {name: stack.container_info(name)["id"] for name in names}

    # Behind the registry: their tags move on.
    v2 = {
        name: stack.build_and_push(f"parity/{name}", "1", marker=f"{name}-v2")
        for name in ("reg-behind", "image-behind")
    }
    # The tag a pinned container came from moves too: the pin does not.
    stack.build_and_push("parity/pinned", "1", marker="pinned-v2")
    # Behind locally: a newer image takes the container's reference in this host's storage
    # (pulled under another tag, then tagged), while the registry's tag stays where it was.
    local_v2 = stack.build_and_push("parity/local-behind", "next", marker="local-behind-v2")
    stack.podman("pull", "--quiet", local_v2.ref)
    stack.podman("tag", local_v2.ref, pushed["local-behind"].ref)
    # Up to date locally although the registry's tag moved: "local" does not ask the registry.
    stack.build_and_push("parity/local-current", "1", marker="local-current-v2")

    before = compare(stack, names, "before")
    assert {name: row["Updated"] for name, row in before.items()} == {
        "reg-behind": "pending",
        "reg-current": "false",
        "image-behind": "pending",
        "local-behind": "pending",
        "local-current": "false",
        "pinned": "false",
    }
    assert before["image-behind"]["Policy"] == "registry"  # Podman's name for the old alias
    assert before["pinned"]["Image"] == pushed["pinned"].pinned
    assert {name: row["ContainerID"] for name, row in before.items()} == ids
    for name in names:  # the dry runs changed nothing
        assert stack.podman("exec", name, "cat", "/version").strip() == f"{name}-v1"

    applied, seconds = timed(podhook_reconcile, stack, "--format", "json")
    show("podhook reconcile (applied)", applied, seconds)
    assert applied.returncode == 0, applied.stderr
    updated = {row["ContainerName"]: row["Updated"] for row in json.loads(applied.stdout)}
    assert {name: updated.get(name) for name in names} == {
        "reg-behind": "true",
        "reg-current": "false",
        "image-behind": "true",
        "local-behind": "true",
        "local-current": "false",
        "pinned": "false",
    }
    for name in names:
        stack.wait_unit(f"container-{name}.service", "active", 60)
    expected = {name: f"{name}-v1" for name in names} | {
        "reg-behind": "reg-behind-v2",
        "image-behind": "image-behind-v2",
        "local-behind": "local-behind-v2",
    }
    assert {
        name: stack.podman("exec", name, "cat", "/version").strip() for name in names
    } == expected
    for name, image in v2.items():
        assert stack.container_info(name)["image_digest"] == image.digest
    assert stack.container_info("pinned")["image_digest"] == pushed["pinned"].digest

    after = compare(stack, names, "after")
    assert {row["Updated"] for row in after.values()} == {"false"}
