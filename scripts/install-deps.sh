#!/usr/bin/env bash
# Install what podhook and its integration tests need: Debian packages (Podman, runc, skopeo,
# the CNCF distribution registry, D-Bus, systemd, Redis, busybox-static, PyGObject's build
# deps) and the project venv (.venv, `pip install -e '.[test]'`).
#
# Idempotent and quiet: apt runs only for packages that `dpkg -s` says are missing (with one
# `apt-get update` first), the venv is created only when absent, and pip is skipped when the
# project's pyproject.toml has not changed since the last successful install into this venv.
# Usage: scripts/install-deps.sh [--runtime] [--force-pip]
#   --runtime: only what running podhook needs (Podman, Redis, D-Bus, PyGObject's build deps),
#              and the project without its test tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
FORCE_PIP=0
RUNTIME_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --force-pip) FORCE_PIP=1 ;;
        --runtime) RUNTIME_ONLY=1 ;;
        *) echo "usage: $0 [--runtime] [--force-pip]" >&2; exit 2 ;;
    esac
done

APT_PACKAGES=(
    podman runc conmon catatonit skopeo uidmap    # containers (crun is refused on hybrid cgroups)
    docker-registry apache2-utils                 # CNCF distribution; htpasswd for its logins
    systemd dbus dbus-user-session                # user manager + session bus for the tests
    redis-server redis-sentinel                   # RQ's queue; Sentinel for tests/integration/test_sentinel.py
    busybox-static                                # root filesystem of the test images
    gnupg                                         # signing keys for tests/integration/test_signatures.py
    chromium fonts-dejavu-core                    # the status page test (headless, with text)
    wrk                                           # HTTP load for bench/ingest.py
    libgirepository1.0-dev libcairo2-dev pkg-config gcc   # PyGObject<3.51 builds from source
)

RUNTIME_PACKAGES=(
    podman runc conmon catatonit uidmap dbus redis-server
    libgirepository1.0-dev libcairo2-dev pkg-config gcc
)
EXTRA="[test]"
IMPORTS="webhook, workers, gi, pydbus, podman, rq, pytest"
if ((RUNTIME_ONLY)); then
    APT_PACKAGES=("${RUNTIME_PACKAGES[@]}")
    EXTRA=""
    IMPORTS="webhook, workers, gi, pydbus, podman, rq"
fi

log() { printf 'install-deps: %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    # No pipe into `grep -q` here: with pipefail its early exit (SIGPIPE) reads as "missing".
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
    [[ $status == ii* ]] || missing+=("$pkg")
done

# A venv from Debian's own python3 needs python3-venv (pyenv/upstream Pythons carry venv).
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv python3-dev)
fi

if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || { log "need root to install: ${missing[*]}"; exit 1; }
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Package scripts may try to start services (redis, registry): without systemd as PID 1
    # invoke-rc.d refuses, which is fine; policy-rc.d makes that explicit and quiet.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ((created_policy)) && rm -f "$policy"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.podhook-install-stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)$EXTRA"
# A test install ("<hash>[test]") holds everything a runtime install ("<hash>") needs.
have="$(cat "$stamp" 2>/dev/null || true)"
if ((FORCE_PIP)) || [[ "$have" != "$want" && "$have" != "$want[test]" ]] \
    || ! "$VENV/bin/python" -c "import $IMPORTS" 2>/dev/null; then
    log "pip install -e '.$EXTRA'"
    pip_log="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$EXTRA" \
        >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        rm -f "$pip_log"
        exit 1
    fi
    rm -f "$pip_log"
    echo "$want" >"$stamp"
fi
log "ok"
