#!/usr/bin/env bash
# `make bench`: a standard load test against the development stack.
#
#   scripts/bench.sh
#
# 1. brings the dev stack up (scripts/dev-stack.sh up dev) unless it runs;
# 2. builds the release binary;
# 3. starts `saga-orchestrator simulate` (8002/8001) and `serve` (8000) in
#    the background, on a fresh database (saga_bench, dropped and created
#    again) and on channels of their own (bench-<time>-partner-events, …), so
#    earlier runs and a developer's data neither slow nor skew this one. They
#    get a clean environment: CONTRACT §6 defaults plus the settings below,
#    nothing from ./.env;
# 4. runs `saga-orchestrator load-test --events N --rate R --concurrency C --json`;
# 5. writes .dev/bench/<time>-<broker>.json ({"meta": run and machine, "report":
#    load-test's JSON}) with the processes' logs in .dev/bench/<time>-<broker>/,
#    and prints the summary;
# 6. stops what it started, by PID: the orchestrator and the simulators, and
#    the dev stack if it was not running before.
# Exits non-zero if any event has no terminal saga, or two.
#
# Settings:
#   BENCH_BROKER        pulsar (default) or redis
#   BENCH_EVENTS        events to publish (10000)
#   BENCH_RATE          events per second, 0 = as fast as the broker takes them (0)
#   BENCH_CONCURRENCY   publishers (4)
#   BENCH_PARTICIPANTS  http (default) or broker: how the orchestrator reaches them
#   BENCH_SIM_ARGS      simulator options (default: DESIGN.md's reference saga,
#                       "--latency-ms 0 --reject-ratio 0.1 --transient-ratio 0
#                       --delete-fail-ratio 0": 10% refused and compensated)
#   BENCH_MAX_IN_FLIGHT the orchestrator's MAX_IN_FLIGHT (64, as in that reference)
#   BENCH_TIMEOUT_SECS  give up waiting for sagas after this long (300)
# The API and simulator ports are the standard ones (ORCHESTRATOR_HOST_PORT,
# ALIANZAS_HOST_PORT, INTEGRACIONES_HOST_PORT move them): stop a `make run` or
# a simple/full stack first.
set -euo pipefail

# Helpers: start_app, stop_app, wait_http, build_release, ports, psql/redis.
# shellcheck source=scripts/dev-stack.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/dev-stack.sh"

# Docker or local, decided once (see the end of dev-stack.sh).
engine >/dev/null

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 1
}

BROKER=${BENCH_BROKER:-pulsar}
EVENTS=${BENCH_EVENTS:-10000}
RATE=${BENCH_RATE:-0}
CONCURRENCY=${BENCH_CONCURRENCY:-4}
PARTICIPANTS=${BENCH_PARTICIPANTS:-http}
SIM_ARGS_TEXT=${BENCH_SIM_ARGS:---latency-ms 0 --reject-ratio 0.1 --transient-ratio 0 --delete-fail-ratio 0}
MAX_IN_FLIGHT=${BENCH_MAX_IN_FLIGHT:-64}
BENCH_TIMEOUT=${BENCH_TIMEOUT_SECS:-300}
BENCH_DB=saga_bench
OUT_DIR=$ROOT/.dev/bench

[[ $BROKER == pulsar || $BROKER == redis ]] || die "BENCH_BROKER must be pulsar or redis, not '$BROKER'"
[[ $PARTICIPANTS == http || $PARTICIPANTS == broker ]] || die "BENCH_PARTICIPANTS must be http or broker, not '$PARTICIPANTS'"
[[ $EVENTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_EVENTS must be a whole number above 0, not '$EVENTS'"
[[ $RATE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_RATE must be a number of events per second (0: unlimited), not '$RATE'"
[[ $CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONCURRENCY must be a whole number above 0, not '$CONCURRENCY'"
[[ $BENCH_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIMEOUT_SECS must be a whole number above 0, not '$BENCH_TIMEOUT'"
read -r -a SIM_ARGS <<<"$SIM_ARGS_TEXT"
command -v python3 >/dev/null 2>&1 || die "python3 not found (it writes the JSON and the summary)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
NAME=$STAMP-$BROKER
RUN_DIR=$OUT_DIR/$NAME
JSON=$OUT_DIR/$NAME.json
PREFIX=bench-$STAMP-

# Our processes listen on the standard ports: refuse before starting anything.
require_free_port "$API_PORT" "the orchestrator's API" \
    "move the bench's own orchestrator with ORCHESTRATOR_HOST_PORT=8010 (a make run? make simple-down / full-down?)"
require_free_port "$ALIANZAS_PORT" "simulated alliances" "move ours with ALIANZAS_HOST_PORT=8012"
require_free_port "$INTEGRACIONES_PORT" "simulated integrations" "move ours with INTEGRACIONES_HOST_PORT=8011"

# --- the dev stack ----------------------------------------------------------------

stack_was_up=0
if "$ROOT/scripts/dev-stack.sh" is-up; then
    stack_was_up=1
    log "dev stack already running: it stays up afterwards"
else
    log "starting the dev stack (stopped again at the end)"
fi

scratch=''
stack_started=0

# shellcheck disable=SC2317  # only ever called by the trap below
finish() {
    local status=$?
    trap - EXIT INT TERM
    stop_app "$RUN_DIR" orchestrator serve 40 || true
    stop_app "$RUN_DIR" simulator simulate 10 || true
    if [[ $BROKER == redis || $PARTICIPANTS == broker ]] && [[ -d $RUN_DIR ]]; then
        # This run's streams, so Redis doesn't grow with every bench.
        local keys
        keys=$(redis_cmd --scan --pattern "$PREFIX*" 2>/dev/null || true)
        if [[ -n $keys ]]; then
            # shellcheck disable=SC2086  # one key per word, none has spaces
            redis_cmd DEL $keys >/dev/null 2>&1 || true
        fi
    fi
    if [[ $stack_started == 1 ]]; then
        "$ROOT/scripts/dev-stack.sh" down dev >&2 || true
    fi
    [[ -n $scratch ]] && rm -rf -- "$scratch"
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $stack_was_up == 0 ]]; then
    stack_started=1
    # Its log lines, not its status table.
    "$ROOT/scripts/dev-stack.sh" up dev >/dev/null
fi

build_release
BIN=$(app_bin)

# --- a fresh database ---------------------------------------------------------------

bench_psql() {
    if local_has_state && pg_running; then
        local_psql "$@"
    else
        compose dev exec -T postgres psql -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres "$@"
    fi
}
bench_psql -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
bench_psql -c "CREATE DATABASE $BENCH_DB" >/dev/null

# --- the orchestrator and the simulators ----------------------------------------------

case $BROKER in
    pulsar) BROKER_URL=pulsar://127.0.0.1:$PULSAR_PORT ;;
    redis) BROKER_URL=redis://127.0.0.1:$REDIS_PORT ;;
esac
DATABASE_URL=$(pg_env "$PG_PORT" "$BENCH_DB")
API=http://127.0.0.1:$API_PORT

# A clean environment, and a working directory outside the repository: the
# binary reads .env from its directory and the ones above it.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/saga-bench.XXXXXX")
mkdir -p "$RUN_DIR"
RUN_ENV=(env -i PATH="$PATH" HOME="${HOME:-/}" TZ=UTC
    BROKER_URL="$BROKER_URL" DATABASE_URL="$DATABASE_URL"
    ALIANZAS_API_URL="http://127.0.0.1:$ALIANZAS_PORT" INTEGRACIONES_API_URL="http://127.0.0.1:$INTEGRACIONES_PORT"
    ALIANZAS_MODE="$PARTICIPANTS" INTEGRACIONES_MODE="$PARTICIPANTS"
    API_ADDR="127.0.0.1:$API_PORT" LOG_FORMAT=json
    CHANNEL_PARTNER_EVENTS="${PREFIX}partner-events" CHANNEL_SAGA_EVENTS="${PREFIX}saga-events"
    CHANNEL_ALLIANCE_COMMANDS="${PREFIX}alliance-commands" CHANNEL_INTEGRATION_COMMANDS="${PREFIX}integration-commands"
    CHANNEL_SAGA_REPLIES="${PREFIX}saga-replies" SUBSCRIPTION_NAME=saga-bench
    MAX_IN_FLIGHT="$MAX_IN_FLIGHT")

sim_flags=()
[[ $PARTICIPANTS == broker ]] && sim_flags+=(--broker)
start_app "$RUN_DIR" simulator "$scratch" "${RUN_ENV[@]}" RUST_LOG=info "$BIN" simulate "${sim_flags[@]}" \
    --alianzas-addr "127.0.0.1:$ALIANZAS_PORT" --integraciones-addr "127.0.0.1:$INTEGRACIONES_PORT" "${SIM_ARGS[@]}"
wait_http "http://127.0.0.1:$ALIANZAS_PORT/stats" "$RUN_DIR" simulator "$TIMEOUT"
wait_http "http://127.0.0.1:$INTEGRACIONES_PORT/stats" "$RUN_DIR" simulator "$TIMEOUT"
start_app "$RUN_DIR" orchestrator "$scratch" "${RUN_ENV[@]}" RUST_LOG=info,sqlx=warn "$BIN" serve
wait_http "$API/ready" "$RUN_DIR" orchestrator "$TIMEOUT"
log "orchestrator (pid $(read_first_line "$RUN_DIR/orchestrator.pid")) and simulators (pid $(read_first_line "$RUN_DIR/simulator.pid")) ready on $BROKER_URL"

# --- the load test ----------------------------------------------------------------------

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '')
rate_text=$RATE/s
[[ $RATE =~ ^0+(\.0+)?$ ]] && rate_text="unlimited rate"
log "load test: $EVENTS events, $rate_text, $CONCURRENCY publishers, $BROKER, participants over $PARTICIPANTS (${SIM_ARGS_TEXT})"
lt_status=0
# Logs go to stdout with the JSON: keep them to errors (the summary is parsed
# out of the output below in any case).
(cd "$scratch" && "${RUN_ENV[@]}" RUST_LOG=error "$BIN" load-test --events "$EVENTS" --rate "$RATE" \
    --concurrency "$CONCURRENCY" --api "$API" --timeout-secs "$BENCH_TIMEOUT" --json) \
    >"$RUN_DIR/load-test.out" 2>"$RUN_DIR/load-test.err" || lt_status=$?

git_rev=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
git_dirty=false
[[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && git_dirty=true

version=$("$BIN" --version 2>/dev/null || echo unknown)
rustc_version=$(rustc --version 2>/dev/null || echo unknown)
META_ENV=(BENCH_META_STARTED_AT="$started_at" BENCH_META_LOADAVG="$loadavg" BENCH_META_GIT_REV="$git_rev"
    BENCH_META_GIT_DIRTY="$git_dirty" BENCH_META_VERSION="$version" BENCH_META_RUSTC="$rustc_version"
    BENCH_META_NPROC="$(nproc)" BENCH_META_KERNEL="$(uname -srm)" BENCH_META_ENGINE="$(engine)"
    BENCH_META_BROKER="$BROKER" BENCH_META_BROKER_URL="$BROKER_URL" BENCH_META_EVENTS="$EVENTS"
    BENCH_META_RATE="$RATE" BENCH_META_CONCURRENCY="$CONCURRENCY" BENCH_META_MAX_IN_FLIGHT="$MAX_IN_FLIGHT" BENCH_META_PARTICIPANTS="$PARTICIPANTS"
    BENCH_META_SIM_ARGS="$SIM_ARGS_TEXT" BENCH_META_DATABASE="$BENCH_DB" BENCH_META_PREFIX="$PREFIX"
    BENCH_META_STACK_WAS_UP="$stack_was_up" BENCH_META_LOGS="${RUN_DIR#"$ROOT"/}" BENCH_META_LT_STATUS="$lt_status")

if ! env "${META_ENV[@]}" python3 - "$RUN_DIR/load-test.out" "$JSON" <<'PY'; then
import json, os, sys

raw_path, out_path = sys.argv[1], sys.argv[2]
lines = open(raw_path, encoding="utf-8", errors="replace").read().splitlines()
# The report is pretty-printed: from the last line that is exactly "{".
starts = [i for i, line in enumerate(lines) if line == "{"]
if not starts:
    sys.exit("no JSON report in the load test's output")
report = json.loads("\n".join(lines[starts[-1]:]))

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None

def mem_total_mb():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None

e = os.environ.get
meta = {
    "started_at": e("BENCH_META_STARTED_AT"),
    "broker": e("BENCH_META_BROKER"),
    "broker_url": e("BENCH_META_BROKER_URL"),
    "events": int(e("BENCH_META_EVENTS")),
    "rate": float(e("BENCH_META_RATE")),
    "concurrency": int(e("BENCH_META_CONCURRENCY")),
    "max_in_flight": int(e("BENCH_META_MAX_IN_FLIGHT")),
    "participants": e("BENCH_META_PARTICIPANTS"),
    "simulator_args": e("BENCH_META_SIM_ARGS"),
    "database": e("BENCH_META_DATABASE"),
    "channel_prefix": e("BENCH_META_PREFIX"),
    "stack": e("BENCH_META_ENGINE"),
    "stack_was_running": e("BENCH_META_STACK_WAS_UP") == "1",
    "load_test_exit_status": int(e("BENCH_META_LT_STATUS")),
    "logs": e("BENCH_META_LOGS"),
    "machine": {
        "nproc": int(e("BENCH_META_NPROC")),
        "cpu": cpu_model(),
        "mem_total_mb": mem_total_mb(),
        "kernel": e("BENCH_META_KERNEL"),
        "loadavg_at_start": e("BENCH_META_LOADAVG"),
    },
    "build": {
        "git_rev": e("BENCH_META_GIT_REV"),
        "git_dirty": e("BENCH_META_GIT_DIRTY") == "true",
        "version": e("BENCH_META_VERSION"),
        "rustc": e("BENCH_META_RUSTC"),
    },
}
with open(out_path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"meta": meta, "report": report}, f, indent=2)
    f.write("\n")
os.replace(out_path + ".tmp", out_path)

def ms(x):
    return f"{x / 1000:.2f} s" if x >= 1000 else f"{x:.0f} ms"

r, lat = report, report["latency_ms"]
m = meta["machine"]
print(f"bench {meta['broker']}: {r['events']} events, "
      f"{'unlimited rate' if meta['rate'] == 0 else str(meta['rate']) + '/s'}, "
      f"{meta['concurrency']} publishers, participants over {meta['participants']} ({meta['simulator_args']})")
print(f"  machine      {m['nproc']} CPUs ({m['cpu']}), {m['mem_total_mb']} MB, load {m['loadavg_at_start']}; "
      f"build {meta['build']['git_rev'][:10]}{' (dirty)' if meta['build']['git_dirty'] else ''}")
print(f"  events       {r['events']} published in {r['publish_secs']:.2f} s")
print(f"  settled      {r['settled']} of {r['events']} in {r['elapsed_secs']:.2f} s  →  {r['sagas_per_sec']:.0f} sagas/s")
print(f"  latency      p50 {ms(lat['p50'])} · p95 {ms(lat['p95'])} · p99 {ms(lat['p99'])} · max {ms(lat['max'])}  (event → terminal state)")
for state, stats in r["outcomes"].items():
    l = stats["latency_ms"]
    print(f"  {state:<12} {stats['count']:>6}   p50 {ms(l['p50'])} · p95 {ms(l['p95'])} · p99 {ms(l['p99'])}")
if r["unsettled"]:
    print(f"  ✗ {r['unsettled']} events have no terminal saga")
if r["duplicates"]:
    print(f"  ✗ {r['duplicates']} duplicate sagas")
PY
    fail_with_log "the load test produced no report (exit $lt_status)" \
        "$RUN_DIR/load-test.err" "$RUN_DIR/load-test.out" "$RUN_DIR/orchestrator.log"
fi
echo "  saved        ${JSON#"$ROOT"/}  (logs in ${RUN_DIR#"$ROOT"/}/)"
if [[ $lt_status -ne 0 ]]; then
    die "the load test failed (exit $lt_status): see ${RUN_DIR#"$ROOT"/}/"
fi
