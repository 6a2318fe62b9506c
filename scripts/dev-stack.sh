#!/usr/bin/env bash
# The development stacks behind `make dev-up`, `simple-up`, `full-up`,
# `shared-up`, their `-down`s, `status`, `logs` and `clean`.
#
#   scripts/dev-stack.sh up [dev|simple|full|shared]     (default: dev)
#   scripts/dev-stack.sh down [dev|simple|full|shared]   (default: dev)
#   scripts/dev-stack.sh status
#   scripts/dev-stack.sh logs [--no-follow] [SERVICE...]
#   scripts/dev-stack.sh clean          stop everything, delete .dev/dev-stack (data included)
#   scripts/dev-stack.sh ensure-env     create ./.env from .env.example if it is missing
#   scripts/dev-stack.sh is-up          exit 0 when the dev services (PostgreSQL, Redis, Pulsar) run
#   scripts/dev-stack.sh engine         print "docker" or "local"
#
# Where a Docker engine answers (`docker info` within 5 s), the stacks are the
# compose files: dev = docker-compose.dev.yml (PostgreSQL, Pulsar, Redis),
# simple = docker-compose.simple.yml (PostgreSQL, Redis, simulators,
# orchestrator on Redis Streams), full = docker-compose.yml (everything, with
# Prometheus and Grafana), shared = docker-compose.shared-pulsar.yml (joins
# an external Pulsar network; SHARED_SIMULATORS=1 adds the simulators).
#
# Where none does, the same services run as local processes on the same
# loopback ports, with data, logs and PIDs under ${DEV_STACK_DIR:-.dev/dev-stack}:
#   dev     PostgreSQL 127.0.0.1:5432 (postgres/postgres, database saga_db),
#           Redis 127.0.0.1:6379, Pulsar 127.0.0.1:6650 (pulsar-lite behind its
#           compatibility proxy, scripts/pulsar-lite.sh);
#   simple  PostgreSQL and Redis, plus `saga-orchestrator simulate --broker`
#           (8002/8001) and `serve` (8000) on Redis Streams;
#   full    the dev services plus the simulators and `serve` on Pulsar
#           (Prometheus and Grafana need Docker: scrape /metrics yourself);
#   shared  needs Docker (it joins a Docker network); refused with a hint.
# There is one local stack: any `down` stops all of it; the data stays until
# `clean`. A standard port held by another process stops `up` with one line
# naming the port, the holder and the variable that moves ours.
#
# Settings: DEV_STACK_ENGINE=auto|docker|local (auto), DEV_STACK_DIR,
# POSTGRES_HOST_PORT (5432), REDIS_HOST_PORT (6379), PULSAR_HOST_PORT (6650),
# ORCHESTRATOR_HOST_PORT (8000), ALIANZAS_HOST_PORT (8002),
# INTEGRACIONES_HOST_PORT (8001) -- the compose files' names -- and, for the
# local simple/full orchestrator and simulators, ORCHESTRATOR_ALIANZAS_MODE,
# ORCHESTRATOR_INTEGRACIONES_MODE, ORCHESTRATOR_ADMIN_TOKEN, SIM_LATENCY_MS,
# SIM_REJECT_RATIO, SIM_TRANSIENT_RATIO, SIM_DELETE_FAIL_RATIO, SIM_SEED.
#
# scripts/bench.sh sources this file for its helpers.
set -euo pipefail

# The generic helpers (scripts/lib.sh's alive, gone, wait_gone,
# read_first_line, fail_with_log; and pg_bindir, run_as,
# ensure_pg_user, redis_ping, fail_with_log, pg_pid, stop_postgres,
# stop_redis, ...) are the test services' own; they work on $STATE_DIR with
# the same file names (postgres.pid, pg-home, redis.pid).
# shellcheck source=scripts/test-services.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/test-services.sh"
SCRIPT_TAG=dev-stack

DEV_DIR=${DEV_STACK_DIR:-$ROOT/.dev/dev-stack}
case $DEV_DIR in
    /*) ;;
    *) DEV_DIR=$PWD/$DEV_DIR ;;
esac
DEV_DIR=${DEV_DIR%/}
STATE_DIR=$DEV_DIR
PULSAR_STATE=$DEV_DIR/pulsar
TIMEOUT=${DEV_STACK_TIMEOUT:-60}
CARGO=${CARGO:-cargo}

PG_PORT=${POSTGRES_HOST_PORT:-5432}
REDIS_PORT=${REDIS_HOST_PORT:-6379}
PULSAR_PORT=${PULSAR_HOST_PORT:-6650}
API_PORT=${ORCHESTRATOR_HOST_PORT:-8000}
ALIANZAS_PORT=${ALIANZAS_HOST_PORT:-8002}
INTEGRACIONES_PORT=${INTEGRACIONES_HOST_PORT:-8001}
# The credentials of .env.example's DATABASE_URL and of the compose files.
DEV_PG_USER=postgres
DEV_PG_PASSWORD=postgres
DEV_PG_DB=saga_db

# /proc/PID/comm keeps 15 characters of "saga-orchestrator".
APP_COMM=saga-orchestrat

log() { printf 'dev-stack: %s\n' "$*" >&2; }
die() {
    printf 'dev-stack: error: %s\n' "$*" >&2
    exit 1
}

# --- engine -------------------------------------------------------------------

ENGINE=''
COMPOSE=()

engine() {
    if [[ -z $ENGINE ]]; then
        case ${DEV_STACK_ENGINE:-auto} in
            docker | local) ENGINE=$DEV_STACK_ENGINE ;;
            auto)
                if command -v docker >/dev/null 2>&1 && timeout 5 docker info >/dev/null 2>&1; then
                    ENGINE=docker
                else
                    ENGINE=local
                fi
                ;;
            *) die "DEV_STACK_ENGINE must be auto, docker or local, not '$DEV_STACK_ENGINE'" ;;
        esac
    fi
    printf '%s' "$ENGINE"
}

compose_init() {
    [[ ${#COMPOSE[@]} -eq 0 ]] || return 0
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "a Docker engine answers but Docker Compose is missing: install the compose plugin ('docker compose version' must work), or run DEV_STACK_ENGINE=local"
    fi
}

compose_file() {
    case $1 in
        dev) echo docker-compose.dev.yml ;;
        simple) echo docker-compose.simple.yml ;;
        full) echo docker-compose.yml ;;
        shared) echo docker-compose.shared-pulsar.yml ;;
        *) die "unknown stack '$1' (expected dev, simple, full or shared)" ;;
    esac
}

# docker compose on stack $1's file, from the project root.
compose() {
    local stack=$1
    shift
    compose_init
    (cd "$ROOT" && "${COMPOSE[@]}" -f "$(compose_file "$stack")" "$@")
}

# The stacks started with Docker through this script, most recent last.
docker_stacks() {
    if [[ -r $DEV_DIR/docker-stacks ]]; then
        cat "$DEV_DIR/docker-stacks"
    fi
}

remember_docker_stack() {
    mkdir -p "$DEV_DIR"
    { docker_stacks | grep -vx "$1" || true; echo "$1"; } >"$DEV_DIR/docker-stacks.tmp"
    mv "$DEV_DIR/docker-stacks.tmp" "$DEV_DIR/docker-stacks"
}

forget_docker_stack() {
    [[ -f $DEV_DIR/docker-stacks ]] || return 0
    { grep -vx "$1" "$DEV_DIR/docker-stacks" || true; } >"$DEV_DIR/docker-stacks.tmp"
    mv "$DEV_DIR/docker-stacks.tmp" "$DEV_DIR/docker-stacks"
}

docker_has_containers() { [[ -n $(compose "$1" ps --all -q 2>/dev/null) ]]; }

docker_up() {
    local stack=$1 args=()
    case $stack in
        dev) args=(up -d --wait) ;;
        simple | full) args=(up -d --build --wait) ;;
        shared)
            local net=${PULSAR_NETWORK:-pulsar-shared}
            docker network inspect "$net" >/dev/null 2>&1 ||
                die "the shared Docker network '$net' does not exist: start the stack that owns the shared Pulsar first, or name its network with PULSAR_NETWORK=… (docker network ls)"
            if [[ ${SHARED_SIMULATORS:-0} == 1 ]]; then
                args=(--profile simulators up -d --build --wait)
            else
                args=(up -d --build --wait)
            fi
            ;;
    esac
    log "docker compose -f $(compose_file "$stack") ${args[*]}"
    compose "$stack" "${args[@]}"
    remember_docker_stack "$stack"
}

docker_down() {
    local stack=$1
    log "docker compose -f $(compose_file "$stack") down (volumes kept)"
    if [[ $stack == shared ]]; then
        compose "$stack" --profile simulators down
    else
        compose "$stack" down
    fi
    forget_docker_stack "$stack"
}

# --- ports --------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# "name (pid N)" of the process listening on port $1, when ss can tell.
port_holder() {
    local line
    command -v ss >/dev/null 2>&1 || return 0
    line=$(ss -Hltnp "sport = :$1" 2>/dev/null | head -n1 || true)
    if [[ $line =~ users:\(\(\"([^\"]+)\",pid=([0-9]+) ]]; then
        printf '%s (pid %s)' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    elif [[ -n $line ]]; then
        printf 'a process of another user or a container'
    else
        printf 'another process'
    fi
}

# Stop with one line if port $1 (for $2) is taken; $3 says how to move ours.
require_free_port() {
    local port=$1 what=$2 hint=$3
    if port_in_use "$port"; then
        die "port $port ($what) is already in use by $(port_holder "$port"): stop that, or $hint"
    fi
}

# --- local PostgreSQL -----------------------------------------------------------

pg_env() { printf 'postgresql://%s:%s@127.0.0.1:%s/%s' "$DEV_PG_USER" "$DEV_PG_PASSWORD" "$1" "${2:-$DEV_PG_DB}"; }

# psql on the local server as postgres, over TCP with the password.
local_psql() {
    local port
    port=$(read_first_line "$DEV_DIR/postgres.port")
    PGPASSWORD=$DEV_PG_PASSWORD PGCONNECT_TIMEOUT=5 "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "${port:-$PG_PORT}" -U "$DEV_PG_USER" -d postgres "$@"
}

# Create database $1 unless it exists.
local_ensure_db() {
    local db=$1
    if [[ -z $(local_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
        local_psql -c "CREATE DATABASE \"$db\"" >/dev/null
        log "created database $db"
    fi
}

start_dev_postgres() {
    local port=$1 bindir home run_user='' pwfile i
    bindir=$(pg_bindir)
    home=$(pg_home)
    if is_root; then
        ensure_pg_user
        run_user=$PG_RUN_USER
    fi
    if [[ -z $home || ! -f $home/data/PG_VERSION ]]; then
        home=$DEV_DIR/pg
        rm -rf -- "$home"
        mkdir -p "$home"
        [[ -n $run_user ]] && chown "$run_user:" "$home"
        # The server's user must reach the directory, and a Unix socket path
        # must stay under ~107 bytes (same rule as the test services).
        if ! run_as "$run_user" test -w "$home" || [[ ${#home} -gt 80 ]]; then
            rm -rf -- "$home"
            home=$(mktemp -d "${TMPDIR:-/tmp}/saga-dev-pg.XXXXXX")
            [[ -n $run_user ]] && chown "$run_user:" "$home"
            log "using $home for PostgreSQL data ($DEV_DIR is unsuitable)"
        fi
        printf '%s\n' "$home" >"$DEV_DIR/pg-home"
        # Password authentication everywhere, the password from a file that
        # only the server's user reads and that is gone once initdb is done.
        pwfile=$home/pwfile
        (umask 077 && printf '%s\n' "$DEV_PG_PASSWORD" >"$pwfile")
        [[ -n $run_user ]] && chown "$run_user:" "$pwfile"
        if ! run_as "$run_user" "$bindir/initdb" -D "$home/data" -U "$DEV_PG_USER" --pwfile="$pwfile" \
            --auth=scram-sha-256 --encoding=UTF8 --locale=C >"$DEV_DIR/initdb.log" 2>&1; then
            rm -f -- "$pwfile"
            fail_with_log "initdb failed" "$DEV_DIR/initdb.log"
        fi
        rm -f -- "$pwfile"
        printf "\n# --- scripts/dev-stack.sh: address and port, rewritten on every start ---\ninclude_if_exists = 'dev-stack.conf'\n" \
            >>"$home/data/postgresql.conf"
        log "initialised PostgreSQL data in $home/data"
    elif is_root; then
        run_user=$(stat -c %U "$home/data")
        [[ $run_user != root ]] || run_user=''
    fi
    cat >"$home/data/dev-stack.conf" <<EOF
# Written by scripts/dev-stack.sh on every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$home'
max_connections = 200
EOF
    [[ -n $run_user ]] && chown "$run_user:" "$home/data/dev-stack.conf"

    if ! run_as "$run_user" "$bindir/pg_ctl" -D "$home/data" -l "$home/postgres.log" \
        -w -t "$TIMEOUT" start >"$DEV_DIR/pg_ctl.log" 2>&1 8>&-; then
        fail_with_log "PostgreSQL did not start on 127.0.0.1:$port" "$DEV_DIR/pg_ctl.log" "$home/postgres.log"
    fi
    printf '%s\n' "$(read_first_line "$home/data/postmaster.pid")" >"$DEV_DIR/postgres.pid"
    echo "$port" >"$DEV_DIR/postgres.port"
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$DEV_PG_USER" -d postgres; then
            local_ensure_db "$DEV_PG_DB"
            return 0
        fi
        pg_running || fail_with_log "PostgreSQL exited during startup" "$home/postgres.log"
        sleep 0.2
    done
    fail_with_log "PostgreSQL not ready on 127.0.0.1:$port after ${TIMEOUT}s" "$home/postgres.log"
}

# --- local Redis ------------------------------------------------------------------

start_dev_redis() {
    local port=$1 i
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found; run scripts/install-deps.sh redis"
    mkdir -p "$DEV_DIR/redis"
    rm -f -- "$DEV_DIR/redis.pid"
    # Append-only file, as in the compose files: streams and consumer groups
    # survive a restart.
    if ! redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
        --appendonly yes --save '' --daemonize yes --pidfile "$DEV_DIR/redis.pid" \
        --logfile "$DEV_DIR/redis.log" --dir "$DEV_DIR/redis" >"$DEV_DIR/redis-start.log" 2>&1 8>&-; then
        fail_with_log "redis-server failed to start on 127.0.0.1:$port" "$DEV_DIR/redis-start.log" "$DEV_DIR/redis.log"
    fi
    echo "$port" >"$DEV_DIR/redis.port"
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if [[ -s $DEV_DIR/redis.pid ]] && redis_ping "$port"; then
            return 0
        fi
        sleep 0.2
    done
    fail_with_log "Redis not ready on 127.0.0.1:$port after ${TIMEOUT}s" "$DEV_DIR/redis.log"
}

# redis-cli on the dev stack's Redis, whichever engine runs it.
redis_cmd() {
    if [[ $(engine) == docker ]] && ! redis_running; then
        compose dev exec -T redis redis-cli "$@"
    else
        redis-cli -h 127.0.0.1 -p "$(read_first_line "$DEV_DIR/redis.port")" "$@"
    fi
}

# --- local Pulsar (pulsar-lite behind its proxy) ----------------------------------

# The proxy on Pulsar's standard port; the broker and its metrics on free ones.
pulsar_lite() {
    env -u PULSAR_LITE_PORT -u PULSAR_LITE_METRICS_PORT \
        PULSAR_LITE_DIR="$PULSAR_STATE" PULSAR_PROXY_PORT="$PULSAR_PORT" PULSAR_LITE_TIMEOUT="$TIMEOUT" \
        "$ROOT/scripts/pulsar-lite.sh" "$@"
}

pulsar_up() { [[ -d $PULSAR_STATE ]] && pulsar_lite status >/dev/null 2>&1; }

# --- local orchestrator and simulators ------------------------------------------

target_dir() {
    local dir=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $dir == /* ]] || dir=$ROOT/$dir
    printf '%s' "$dir"
}

app_bin() { printf '%s/release/saga-orchestrator' "$(target_dir)"; }

build_release() {
    "$ROOT/scripts/install-deps.sh" protoc >&2
    log "building the release binary ($CARGO build --release)"
    (cd "$ROOT" && "$CARGO" build --release >&2) || die "cargo build --release failed"
    [[ -x $(app_bin) ]] || die "no binary at $(app_bin) after the build"
}

# True once PID $1 has exited (a zombie counts).
# True if the process recorded as $dir/$name.pid is saga-orchestrator running
# subcommand $sub (checked on its command line, against a recycled PID).
app_alive() {
    local dir=$1 name=$2 sub=$3 pid
    pid=$(read_first_line "$dir/$name.pid")
    alive "$pid" "$APP_COMM" || return 1
    [[ -r /proc/$pid/cmdline ]] || return 0
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qx -- "$sub"
}

# start_app DIR NAME CWD COMMAND...: run COMMAND in its own session, stdio on
# DIR/NAME.log, its PID in DIR/NAME.pid. COMMAND should exec the binary (env …).
start_app() {
    local dir=$1 name=$2 cwd=$3
    shift 3
    mkdir -p "$dir"
    # setsid: a Ctrl-C in the caller's terminal doesn't reach it; no inherited
    # descriptors beyond the log, so callers capturing output don't wait on it.
    (cd "$cwd" && exec setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 8>&- 9>&-) &
    printf '%s\n' "$!" >"$dir/$name.pid"
}

# stop_app DIR NAME SUB [GRACE]: SIGTERM, then SIGKILL after GRACE seconds.
stop_app() {
    local dir=$1 name=$2 sub=$3 grace=${4:-40} pid
    pid=$(read_first_line "$dir/$name.pid")
    if app_alive "$dir" "$name" "$sub"; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" "$grace"; then
            log "$name (pid $pid) still running after ${grace}s, killing"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f -- "$dir/$name.pid"
}

# wait_http URL DIR NAME SECS: until URL answers 2xx, while DIR/NAME.pid lives.
wait_http() {
    local url=$1 dir=$2 name=$3 secs=$4 pid i
    command -v curl >/dev/null 2>&1 || die "curl not found (apt-get install curl)"
    pid=$(read_first_line "$dir/$name.pid")
    for ((i = 0; i < secs * 5; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        # Not yet named saga-orchestrat right after the fork: only a gone PID fails.
        if gone "$pid"; then
            fail_with_log "$name (pid $pid) exited during startup" "$dir/$name.log"
        fi
        sleep 0.2
    done
    fail_with_log "$name not ready at $url after ${secs}s" "$dir/$name.log"
}

simulator_running() { app_alive "$DEV_DIR" simulator simulate; }
orchestrator_running() { app_alive "$DEV_DIR" orchestrator serve; }

stop_apps() {
    stop_app "$DEV_DIR" orchestrator serve 40
    stop_app "$DEV_DIR" simulator simulate 10
    rm -f -- "$DEV_DIR/apps.stack"
}

# The orchestrator and the simulators of the local simple/full stacks, set up
# like their compose services (loopback instead of 0.0.0.0).
start_apps() {
    local stack=$1 broker bin
    case $stack in
        simple) broker=redis://127.0.0.1:$REDIS_PORT ;;
        full) broker=pulsar://127.0.0.1:$PULSAR_PORT ;;
    esac
    if [[ $(read_first_line "$DEV_DIR/apps.stack") == "$stack" ]] && simulator_running && orchestrator_running; then
        log "orchestrator and simulators of '$stack' already running"
        return 0
    fi
    stop_apps
    require_free_port "$API_PORT" "the orchestrator's API" "move ours with ORCHESTRATOR_HOST_PORT=8010"
    require_free_port "$ALIANZAS_PORT" "simulated alliances" "move ours with ALIANZAS_HOST_PORT=8012"
    require_free_port "$INTEGRACIONES_PORT" "simulated integrations" "move ours with INTEGRACIONES_HOST_PORT=8011"
    build_release
    bin=$(app_bin)
    STARTED+=(apps)
    start_app "$DEV_DIR" simulator "$ROOT" env BROKER_URL="$broker" LOG_FORMAT=json RUST_LOG=info \
        "$bin" simulate --broker \
        --alianzas-addr "127.0.0.1:$ALIANZAS_PORT" --integraciones-addr "127.0.0.1:$INTEGRACIONES_PORT" \
        --latency-ms "${SIM_LATENCY_MS:-2}" --reject-ratio "${SIM_REJECT_RATIO:-0.1}" \
        --transient-ratio "${SIM_TRANSIENT_RATIO:-0.05}" --delete-fail-ratio "${SIM_DELETE_FAIL_RATIO:-0.2}" \
        --seed "${SIM_SEED:-42}"
    wait_http "http://127.0.0.1:$ALIANZAS_PORT/stats" "$DEV_DIR" simulator "$TIMEOUT"
    wait_http "http://127.0.0.1:$INTEGRACIONES_PORT/stats" "$DEV_DIR" simulator "$TIMEOUT"
    start_app "$DEV_DIR" orchestrator "$ROOT" env \
        BROKER_URL="$broker" \
        DATABASE_URL="$(pg_env "$PG_PORT")" \
        ALIANZAS_API_URL="http://127.0.0.1:$ALIANZAS_PORT" \
        INTEGRACIONES_API_URL="http://127.0.0.1:$INTEGRACIONES_PORT" \
        ALIANZAS_MODE="${ORCHESTRATOR_ALIANZAS_MODE:-http}" \
        INTEGRACIONES_MODE="${ORCHESTRATOR_INTEGRACIONES_MODE:-http}" \
        API_ADDR="127.0.0.1:$API_PORT" \
        ADMIN_TOKEN="${ORCHESTRATOR_ADMIN_TOKEN:-}" \
        LOG_FORMAT=json RUST_LOG=info,sqlx=warn \
        "$bin" serve
    wait_http "http://127.0.0.1:$API_PORT/ready" "$DEV_DIR" orchestrator "$TIMEOUT"
    echo "$stack" >"$DEV_DIR/apps.stack"
    log "simulator (pid $(read_first_line "$DEV_DIR/simulator.pid")) on 127.0.0.1:$ALIANZAS_PORT/$INTEGRACIONES_PORT," \
        "orchestrator (pid $(read_first_line "$DEV_DIR/orchestrator.pid")) on http://127.0.0.1:$API_PORT ($broker)"
}

# --- local stack ------------------------------------------------------------------

write_env_file() {
    cat >"$DEV_DIR/env.tmp" <<EOF
# Written by scripts/dev-stack.sh: the local dev stack's addresses.
export DEV_DATABASE_URL=$(pg_env "$(read_first_line "$DEV_DIR/postgres.port")")
export DEV_REDIS_URL=redis://127.0.0.1:$(read_first_line "$DEV_DIR/redis.port")
EOF
    if pulsar_up; then
        echo "export DEV_PULSAR_URL=pulsar://127.0.0.1:$PULSAR_PORT" >>"$DEV_DIR/env.tmp"
    fi
    mv "$DEV_DIR/env.tmp" "$DEV_DIR/env"
}

# The servers started below must not inherit descriptor 8 (the state dir's
# lock): a daemon holding it would block every later command. Hence 8>&-.

# What this invocation started, stopped again if it fails half-way.
STARTED=()

# shellcheck disable=SC2317  # only ever called by the trap in local_up
undo_partial_start() {
    local status=$?
    trap - EXIT
    if [[ $status -ne 0 && ${#STARTED[@]} -gt 0 ]]; then
        log "start failed; stopping what it started: ${STARTED[*]}"
        local s
        for s in "${STARTED[@]}"; do
            case $s in
                apps) stop_apps >/dev/null 2>&1 || true ;;
                pulsar) pulsar_lite stop >/dev/null 2>&1 || true ;;
                redis) stop_redis >/dev/null 2>&1 || true ;;
                postgres) stop_postgres >/dev/null 2>&1 || true ;;
            esac
        done
    fi
    exit "$status"
}

local_up() {
    local stack=$1 want_pulsar=1 deps=(postgres redis)
    case $stack in
        shared)
            die "shared-up joins a Pulsar on a shared Docker network and needs a Docker engine (none answers here). Without Docker: make dev-up, then BROKER_URL=pulsar://<shared host>:6650 make run"
            ;;
        simple) want_pulsar=0 ;;
    esac
    [[ $want_pulsar == 1 ]] && deps+=(pulsar-lite protoc)
    mkdir -p "$DEV_DIR"
    exec 8>"$DEV_DIR/.lock"
    flock -w "$TIMEOUT" 8 || die "another dev-stack command holds $DEV_DIR/.lock"

    # Every port first, so a conflict stops us before anything starts.
    pg_running || require_free_port "$PG_PORT" PostgreSQL \
        "move ours with POSTGRES_HOST_PORT=5433 and point DATABASE_URL in .env at it"
    redis_running || require_free_port "$REDIS_PORT" Redis \
        "move ours with REDIS_HOST_PORT=6380 and point BROKER_URL in .env at it"
    if [[ $want_pulsar == 1 ]] && ! pulsar_up; then
        require_free_port "$PULSAR_PORT" Pulsar \
            "move ours with PULSAR_HOST_PORT=6651 and point BROKER_URL in .env at it"
    fi
    "$ROOT/scripts/install-deps.sh" "${deps[@]}" >&2

    trap undo_partial_start EXIT
    if pg_running; then
        log "PostgreSQL already running (pid $(pg_pid))"
    else
        start_dev_postgres "$PG_PORT"
        STARTED+=(postgres)
    fi
    if redis_running; then
        log "Redis already running (pid $(redis_pid))"
    else
        start_dev_redis "$REDIS_PORT"
        STARTED+=(redis)
    fi
    if [[ $want_pulsar == 1 ]]; then
        if pulsar_up; then
            log "Pulsar (pulsar-lite + proxy) already running"
        else
            pulsar_lite start >/dev/null 8>&-
            STARTED+=(pulsar)
        fi
    fi
    write_env_file
    if [[ $stack == simple || $stack == full ]]; then
        start_apps "$stack"
        [[ $stack == full ]] && log "Prometheus and Grafana need Docker and are not started; metrics: http://127.0.0.1:$API_PORT/metrics"
    fi
    trap - EXIT
    local_status
}

local_has_state() { [[ -d $DEV_DIR ]]; }

# local_down [--purging]: the latter from clean, which deletes the data next.
local_down() {
    if ! local_has_state; then
        log "no local stack to stop ($DEV_DIR does not exist)"
        return 0
    fi
    exec 8>"$DEV_DIR/.lock"
    flock -w "$TIMEOUT" 8 || die "another dev-stack command holds $DEV_DIR/.lock"
    stop_apps
    if [[ -d $PULSAR_STATE ]]; then
        pulsar_lite stop
    fi
    stop_redis
    stop_postgres
    rm -f -- "$DEV_DIR/postgres.pid" "$DEV_DIR/redis.pid" "$DEV_DIR/env"
    if [[ ${1:-} != --purging ]]; then
        log "local stack stopped; data kept in $DEV_DIR (make clean deletes it)"
    fi
}

# One line per service: name, state, pid, address.
row() { printf '  %-13s %-12s %-10s %s\n' "$@"; }

# "not running", or who holds the port instead.
down_row() {
    local name=$1 port=$2
    if port_in_use "$port"; then
        row "$name" "not running" "" "port $port held by $(port_holder "$port")"
    else
        row "$name" "not running" "" ""
    fi
}

local_status() {
    local pid port home
    echo "local stack (state in ${DEV_DIR#"$ROOT"/}):"
    row SERVICE STATE PID ADDRESS
    if pg_running; then
        home=$(pg_home)
        row postgres running "$(pg_pid)" "127.0.0.1:$(read_first_line "$DEV_DIR/postgres.port")  database $DEV_PG_DB, data ${home#"$ROOT"/}/data"
    else
        down_row postgres "$PG_PORT"
    fi
    if redis_running; then
        row redis running "$(redis_pid)" "127.0.0.1:$(read_first_line "$DEV_DIR/redis.port")"
    else
        down_row redis "$REDIS_PORT"
    fi
    pid=$(read_first_line "$PULSAR_STATE/broker.pid")
    if alive "$pid" pulsar-lite; then
        port=$(read_first_line "$PULSAR_STATE/broker.port")
        row pulsar-lite running "$pid" "127.0.0.1:$port (metrics :$(read_first_line "$PULSAR_STATE/metrics.port")), clients use the proxy"
    else
        row pulsar-lite "not running" "" ""
    fi
    pid=$(read_first_line "$PULSAR_STATE/proxy.pid")
    if alive "$pid" pulsar-lite-pro; then
        row pulsar-proxy running "$pid" "127.0.0.1:$(read_first_line "$PULSAR_STATE/proxy.port")  (Pulsar for clients)"
    else
        down_row pulsar-proxy "$PULSAR_PORT"
    fi
    if simulator_running; then
        row simulator running "$(read_first_line "$DEV_DIR/simulator.pid")" \
            "127.0.0.1:$ALIANZAS_PORT (alliances), 127.0.0.1:$INTEGRACIONES_PORT (integrations)"
    else
        row simulator "not running" "" ""
    fi
    if orchestrator_running; then
        row orchestrator running "$(read_first_line "$DEV_DIR/orchestrator.pid")" \
            "http://127.0.0.1:$API_PORT  ($(read_first_line "$DEV_DIR/apps.stack") stack)"
    else
        down_row orchestrator "$API_PORT"
    fi
    if [[ -f $DEV_DIR/env ]]; then
        echo "env: ${DEV_DIR#"$ROOT"/}/env (DEV_DATABASE_URL, DEV_REDIS_URL, DEV_PULSAR_URL)"
    fi
}

local_logs() {
    local follow=$1 files=() name home
    shift
    local names=("$@")
    [[ ${#names[@]} -gt 0 ]] || names=(postgres redis pulsar-lite pulsar-proxy simulator orchestrator)
    for name in "${names[@]}"; do
        case $name in
            postgres)
                home=$(pg_home)
                [[ -n $home ]] && files+=("$home/postgres.log")
                ;;
            redis) files+=("$DEV_DIR/redis.log") ;;
            pulsar-lite | pulsar) files+=("$PULSAR_STATE/broker.log") ;;
            pulsar-proxy | proxy) files+=("$PULSAR_STATE/proxy.log") ;;
            simulator) files+=("$DEV_DIR/simulator.log") ;;
            orchestrator) files+=("$DEV_DIR/orchestrator.log") ;;
            *) die "unknown service '$name' (postgres, redis, pulsar-lite, pulsar-proxy, simulator, orchestrator)" ;;
        esac
    done
    local existing=() f
    for f in "${files[@]}"; do
        [[ -f $f ]] && existing+=("$f")
    done
    [[ ${#existing[@]} -gt 0 ]] || die "no log files yet under $DEV_DIR (make dev-up first)"
    if [[ $follow == 1 ]]; then
        exec tail -n 20 -F "${existing[@]}"
    fi
    tail -n 20 "${existing[@]}"
}

# --- commands -----------------------------------------------------------------------

cmd_up() {
    local stack=${1:-dev}
    compose_file "$stack" >/dev/null
    if [[ $(engine) == docker ]]; then
        docker_up "$stack"
    else
        local_up "$stack"
    fi
}

cmd_down() {
    local stack=${1:-dev}
    compose_file "$stack" >/dev/null
    if [[ $(engine) == docker ]]; then
        docker_down "$stack"
    fi
    # Local processes are stopped whatever the engine: they may predate it.
    if local_has_state || [[ $(engine) == local ]]; then
        local_down
    fi
}

cmd_status() {
    local stack shown=0
    if [[ $(engine) == docker ]]; then
        compose_init
        for stack in dev simple full shared; do
            if docker_has_containers "$stack"; then
                echo "docker compose -f $(compose_file "$stack"):"
                compose "$stack" ps --all
                shown=1
            fi
        done
        [[ $shown == 1 ]] || echo "no compose stack has containers (make dev-up, simple-up, full-up or shared-up)"
        if local_has_state && { pg_running || redis_running || pulsar_up; }; then
            local_status
        fi
    else
        echo "engine: local processes (no Docker engine answers)"
        local_status
    fi
}

cmd_logs() {
    local follow=1 stack
    if [[ ${1:-} == --no-follow ]]; then
        follow=0
        shift
    fi
    if [[ $(engine) == docker ]] && ! { local_has_state && { pg_running || redis_running; }; }; then
        stack=${STACK:-$(docker_stacks | tail -n1)}
        stack=${stack:-dev}
        if [[ $follow == 1 ]]; then
            compose "$stack" logs -f --tail 100 "$@"
        else
            compose "$stack" logs --tail 100 "$@"
        fi
        return
    fi
    local_logs "$follow" "$@"
}

cmd_is_up() {
    if [[ $(engine) == docker ]] && ! local_has_state; then
        local running
        compose_init
        running=$(compose dev ps --status running --services 2>/dev/null || true)
        grep -qx postgres <<<"$running" && grep -qx redis <<<"$running" && grep -qx pulsar <<<"$running"
        return
    fi
    pg_running && redis_running && pulsar_up
}

cmd_clean() {
    local stack home
    if [[ $(engine) == docker ]]; then
        for stack in $(docker_stacks); do
            docker_down "$stack" || true
        done
    fi
    if local_has_state; then
        home=$(pg_home)
        local_down --purging
        # The data may live outside the state dir (see start_dev_postgres).
        if [[ -n $home && $home != "$DEV_DIR"/* && -d $home ]]; then
            rm -rf -- "$home"
        fi
        rm -rf -- "$DEV_DIR"
        log "removed $DEV_DIR"
    fi
}

cmd_ensure_env() {
    if [[ ! -f $ROOT/.env ]]; then
        cp "$ROOT/.env.example" "$ROOT/.env"
        log "created .env from .env.example (edit it for your setup; it is gitignored)"
    fi
}

# Sourced (scripts/bench.sh): define, don't run.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    return 0
fi

# Decided once, here: $(engine) below runs in subshells, which can neither
# cache the answer nor stop the script.
engine >/dev/null

case ${1:-} in
    up) cmd_up "${2:-dev}" ;;
    down) cmd_down "${2:-dev}" ;;
    status) cmd_status ;;
    logs)
        shift
        cmd_logs "$@"
        ;;
    clean) cmd_clean ;;
    ensure-env) cmd_ensure_env ;;
    is-up) cmd_is_up ;;
    engine) engine && echo ;;
    *)
        echo "usage: $0 up|down [dev|simple|full|shared] | status | logs [--no-follow] [SERVICE...] | clean | ensure-env | is-up | engine" >&2
        exit 2
        ;;
esac
