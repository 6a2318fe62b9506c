#!/usr/bin/env bash
# Kept for the tests, which run this path (tests/it/broker.rs) to start and
# restart a private Pulsar: it is `cargo xtask pulsar …` (xtask/src/pulsar/),
# through the xtask binary `make test` exports as XTASK_BIN when there is one.
set -euo pipefail
if [[ -x ${XTASK_BIN:-} ]]; then
    exec "$XTASK_BIN" pulsar "$@"
fi
exec cargo run --quiet --manifest-path "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml" -p xtask -- pulsar "$@"
