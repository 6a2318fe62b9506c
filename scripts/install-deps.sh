#!/usr/bin/env bash
# Install the system tools the build and the test suite need, idempotently.
#
#   scripts/install-deps.sh [protoc] [postgres] [redis] [pulsar-lite] ...
#
# With no arguments all four are checked. Only missing tools are installed,
# and apt-get runs only when something is actually missing. pulsar-lite (the
# tests' Pulsar broker) comes from PyPI, through scripts/pulsar-lite.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    echo "usage: $0 [protoc] [postgres] [redis] [pulsar-lite] ...   (default: all)" >&2
}

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

have_protoc() {
    # prost-build honours $PROTOC, so an explicit one counts as present.
    if [[ -n ${PROTOC:-} && -x ${PROTOC} ]]; then return 0; fi
    command -v protoc >/dev/null 2>&1
}

have_initdb() {
    # Debian keeps server binaries off PATH, under /usr/lib/postgresql/<ver>/bin.
    local f
    for f in /usr/lib/postgresql/*/bin/initdb; do
        [[ -x $f ]] && return 0
    done
    command -v initdb >/dev/null 2>&1
}

have_redis() {
    command -v redis-server >/dev/null 2>&1
}

have_pip() {
    command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1
}

have_pulsar_lite() {
    "$ROOT/scripts/pulsar-lite.sh" install --check >/dev/null 2>&1
}

needs=("$@")
if [[ ${#needs[@]} -eq 0 ]]; then
    needs=(protoc postgres redis pulsar-lite)
fi

# Each entry is "thing:debian-package", each at most once.
missing=()
install_pulsar_lite=0
add_missing() {
    case " ${missing[*]-} " in
        *" $1 "*) ;;
        *) missing+=("$1") ;;
    esac
}
for need in "${needs[@]}"; do
    case $need in
        protoc | protobuf | protobuf-compiler)
            have_protoc || add_missing protoc:protobuf-compiler ;;
        postgres | postgresql | pg)
            have_initdb || add_missing postgres:postgresql ;;
        redis | redis-server)
            have_redis || add_missing redis:redis-server ;;
        pulsar-lite | pulsar)
            if ! have_pulsar_lite; then
                install_pulsar_lite=1
                # pip comes from apt; pulsar-lite itself from PyPI, below.
                have_pip || add_missing pip:python3-pip
            fi
            ;;
        -h | --help)
            usage; exit 0 ;;
        *)
            usage; die "unknown dependency '$need'" ;;
    esac
done

if [[ ${#missing[@]} -eq 0 && $install_pulsar_lite -eq 0 ]]; then
    log "all present (${needs[*]})"
    exit 0
fi

# Last, once apt has provided pip if it had to.
install_pulsar_lite_now() {
    [[ $install_pulsar_lite -eq 1 ]] || return 0
    "$ROOT/scripts/pulsar-lite.sh" install >/dev/null || die "installing pulsar-lite failed"
    log "installed pulsar-lite ($("$ROOT/scripts/pulsar-lite.sh" install --check))"
}
if [[ ${#missing[@]} -eq 0 ]]; then
    install_pulsar_lite_now
    exit 0
fi

pkgs=()
for m in "${missing[@]}"; do
    pkgs+=("${m#*:}")
done

if ! command -v apt-get >/dev/null 2>&1; then
    die "apt-get not found; please install these packages yourself: ${pkgs[*]}"
fi

# Root installs directly; otherwise use sudo (non-interactive when there is
# no terminal, so CI fails fast instead of hanging on a password prompt).
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        die "not root and sudo not found; please install as root: apt-get install ${pkgs[*]}"
    fi
    if [[ -t 0 ]]; then
        sudo_cmd=(sudo)
    else
        sudo_cmd=(sudo -n)
    fi
fi

export DEBIAN_FRONTEND=noninteractive
${sudo_cmd[@]+"${sudo_cmd[@]}"} apt-get update -qq ||
    die "apt-get update failed; install manually: apt-get install ${pkgs[*]}"
# Wait for a concurrent apt/dpkg (e.g. unattended-upgrades) instead of failing.
${sudo_cmd[@]+"${sudo_cmd[@]}"} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${pkgs[@]}" ||
    die "apt-get install failed; install manually: apt-get install ${pkgs[*]}"

# Verify, so a package that does not provide what we expect is caught here.
for m in "${missing[@]}"; do
    thing=${m%%:*}
    case $thing in
        protoc) have_protoc || die "protobuf-compiler installed but protoc still not found" ;;
        postgres) have_initdb || die "postgresql installed but initdb still not found" ;;
        redis) have_redis || die "redis-server installed but redis-server still not found" ;;
        pip) have_pip || die "python3-pip installed but python3 -m pip still fails" ;;
    esac
    log "installed $thing (package ${m#*:})"
done
install_pulsar_lite_now
