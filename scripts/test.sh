#!/usr/bin/env bash
# Run the whole Rust test suite against a private PostgreSQL and Redis
# (what `make test` runs). Extra arguments go to the test runner, e.g.
#   scripts/test.sh redis        # only tests whose name matches "redis"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
started=$SECONDS

scripts/install-deps.sh protoc postgres redis

# Services left behind by earlier runs that were SIGKILLed (their trap never
# ran): the directory name carries the PID of the test.sh that owned it.
# A zombie (not yet reaped by PID 1) counts as dead.
pid_alive() {
    kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}
for dir in "$ROOT"/.dev/test-services-*; do
    [[ -d $dir ]] || continue
    owner=${dir##*-}
    if [[ $owner =~ ^[0-9]+$ ]] && ! pid_alive "$owner"; then
        echo "test.sh: cleaning up services of dead run $owner"
        TEST_SERVICES_DIR=$dir scripts/test-services.sh stop || true
    fi
done

# A per-run state dir, so concurrent runs (and `make test-services-up`)
# never share or stop each other's servers.
export TEST_SERVICES_DIR="$ROOT/.dev/test-services-$$"

# shellcheck disable=SC2317  # only ever called by the trap below
finish() {
    local status=$?
    trap - EXIT INT TERM
    scripts/test-services.sh stop >/dev/null 2>&1 || true
    local elapsed=$((SECONDS - started))
    printf 'test.sh: finished in %dm%02ds (exit %d)\n' $((elapsed / 60)) $((elapsed % 60)) "$status"
    exit "$status"
}
# EXIT covers normal ends and `set -e` failures; INT/TERM are turned into an
# exit so the EXIT handler stops the servers there too.
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

scripts/test-services.sh start >/dev/null
# shellcheck source=/dev/null
source "$TEST_SERVICES_DIR/env"
echo "test.sh: TEST_DATABASE_URL=$TEST_DATABASE_URL"
echo "test.sh: TEST_REDIS_URL=$TEST_REDIS_URL"

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

# Doc tests: `--all-targets` never includes them, so run them separately
# when there is a library. Pass the extra arguments only if they are plain
# name filters; runner-specific flags (e.g. nextest's -E) would break it.
run_doctests=1
if [[ ! -f src/lib.rs ]] && ! grep -q '^\[lib\]' Cargo.toml; then
    run_doctests=0
fi
for arg in "$@"; do
    if [[ $arg == -* ]]; then
        run_doctests=0
        echo "test.sh: runner flags given, skipping doc tests"
        break
    fi
done

# Doc tests first, so the run closes on the main runner's summary.
status=0
if [[ $run_doctests -eq 1 ]]; then
    cargo test --doc --no-fail-fast "$@" || status=$?
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast "$@" || status=$?
else
    echo "test.sh: cargo-nextest not installed, using cargo test"
    cargo test --all-targets --no-fail-fast "$@" || status=$?
fi

exit "$status"
