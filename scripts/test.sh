#!/usr/bin/env bash
# Run the whole Rust test suite against a private PostgreSQL, Redis and
# Pulsar (pulsar-lite behind its compatibility proxy); what `make test`
# runs. The integration suite runs twice, once per broker (TEST_BROKER).
# Extra arguments go to the test runner, e.g.
#   scripts/test.sh saga_flow    # only tests whose name matches "saga_flow"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
started=$SECONDS

scripts/install-deps.sh protoc postgres redis pulsar-lite

# Build everything once, up front: the proxy the services need comes from
# the same build as the tests, so nothing is compiled twice.
cargo build --workspace --all-targets
export PULSAR_PROXY_BIN="$ROOT/target/debug/pulsar-lite-proxy"

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
echo "test.sh: TEST_PULSAR_URL=$TEST_PULSAR_URL"

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
# Tests that need no broker (store, demo), always use their own broker
# (broker_restart, broker_refusal) or always the suite's Redis
# (redis_streams) run in the first pass only.
broker_free='test(/^store::/) | test(/^demo::/) | test(/^broker_restart::/) | test(/^broker_refusal::/) | test(/^redis_streams::/)'
if cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: unit tests, and the integration suite on Redis"
    TEST_BROKER=redis cargo nextest run --workspace --all-targets --no-fail-fast "$@" || status=$?
    echo "test.sh: the integration suite on Pulsar"
    TEST_BROKER=pulsar cargo nextest run --test it --no-fail-fast \
        -E "not ($broker_free)" "$@" || status=$?
else
    echo "test.sh: cargo-nextest not installed, using cargo test"
    TEST_BROKER=redis cargo test --workspace --all-targets --no-fail-fast "$@" || status=$?
    TEST_BROKER=pulsar cargo test --test it --no-fail-fast "$@" || status=$?
fi

exit "$status"
