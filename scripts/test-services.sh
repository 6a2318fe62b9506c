#!/usr/bin/env bash
# Private, throw-away PostgreSQL, Redis and Pulsar (pulsar-lite behind its
# compatibility proxy, see scripts/pulsar-lite.sh) for the test suite, bound
# to 127.0.0.1 on free ports, so tests never touch a developer's real servers.
#
#   scripts/test-services.sh start|stop|status
#
# State (data, logs, PIDs, env file) lives in ${TEST_SERVICES_DIR:-.dev/test-services},
# Pulsar's in its pulsar/ subdirectory. After `start`, `source <state dir>/env`
# exports TEST_DATABASE_URL, TEST_REDIS_URL and TEST_PULSAR_URL, plus
# TEST_PULSAR_DIRECT_URL, TEST_PULSAR_DIR and TEST_PULSAR_CTL, with which a
# test restarts the broker:
#   PULSAR_LITE_DIR=$TEST_PULSAR_DIR $TEST_PULSAR_CTL restart-broker [--kill]
# `status` exits 0 only when all servers run. TEST_SERVICES_PULSAR=0 leaves
# Pulsar out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_TAG=test-services
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
STATE_DIR=${TEST_SERVICES_DIR:-$ROOT/.dev/test-services}
# Absolute, because the path ends up in server config and in the env file.
case $STATE_DIR in
    /*) ;;
    *) STATE_DIR=$PWD/$STATE_DIR ;;
esac
STATE_DIR=${STATE_DIR%/}
TIMEOUT=${TEST_SERVICES_TIMEOUT:-60}
PULSAR_DIR=$STATE_DIR/pulsar
WITH_PULSAR=${TEST_SERVICES_PULSAR:-1}
# initdb/postgres refuse to run as root; this user runs them instead.
PG_RUN_USER=${TEST_SERVICES_PG_USER:-sagatest}

log() { printf 'test-services: %s\n' "$*" >&2; }
die() { printf 'test-services: error: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

pg_bindir() {
    local d best=''
    if [[ -n ${PG_BINDIR:-} ]]; then
        printf '%s' "$PG_BINDIR"
        return
    fi
    # Highest installed version wins.
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb ]] || continue
        best=$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -n1)
    done
    if [[ -z $best ]] && command -v initdb >/dev/null 2>&1; then
        best=$(dirname "$(command -v initdb)")
    fi
    [[ -n $best ]] || die "PostgreSQL server binaries (initdb) not found; run scripts/install-deps.sh postgres"
    printf '%s' "$best"
}

# Run a command as user $1 (no-op switch when empty).
run_as() {
    local user=$1
    shift
    if [[ -z $user ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/bash "$user" -c "$(printf '%q ' "$@")"
    fi
}

ensure_pg_user() {
    if ! id -u "$PG_RUN_USER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_RUN_USER"
        log "created system user $PG_RUN_USER to run PostgreSQL"
    fi
}

redis_ping() {
    local port=$1 reply=''
    if command -v redis-cli >/dev/null 2>&1; then
        [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]
        return
    fi
    # No redis-cli: speak RESP directly.
    {
        exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'PING\r\n' >&3 &&
            IFS= read -r -t 2 reply <&3
        exec 3<&- 3>&-
    } 2>/dev/null || return 1
    [[ $reply == +PONG* ]]
}

pg_home() { read_first_line "$STATE_DIR/pg-home"; }

pg_pid() {
    local pid home
    pid=$(read_first_line "$STATE_DIR/postgres.pid")
    if [[ -z $pid ]]; then
        # Start may have been interrupted before the PID was recorded.
        home=$(pg_home)
        [[ -n $home ]] && pid=$(read_first_line "$home/data/postmaster.pid")
    fi
    printf '%s' "$pid"
}

redis_pid() { read_first_line "$STATE_DIR/redis.pid"; }

pg_running() { alive "$(pg_pid)" postgres; }
redis_running() { alive "$(redis_pid)" redis-server; }

# scripts/pulsar-lite.sh on this state dir, always on free ports: fixed ones
# exported for a developer's own broker (say, 6650) must not leak in here.
pulsar_ctl() {
    env -u PULSAR_LITE_PORT -u PULSAR_PROXY_PORT -u PULSAR_LITE_METRICS_PORT \
        PULSAR_LITE_DIR="$PULSAR_DIR" PULSAR_LITE_TIMEOUT="$TIMEOUT" \
        "$ROOT/scripts/pulsar-lite.sh" "$@"
}

pulsar_wanted() { [[ $WITH_PULSAR != 0 ]]; }
pulsar_running() { pulsar_ctl status >/dev/null 2>&1; }

print_env() {
    cat "$STATE_DIR/env"
}

start_postgres() {
    local port=$1 bindir pg_home run_user='' i
    bindir=$(pg_bindir)
    pg_home=$STATE_DIR/pg
    mkdir -p "$pg_home"
    if is_root; then
        ensure_pg_user
        run_user=$PG_RUN_USER
        chown "$run_user:" "$pg_home"
    fi
    # The unprivileged user must reach the directory (a repo under /root is
    # not traversable), and a Unix socket path must stay under ~107 bytes.
    if ! run_as "$run_user" test -w "$pg_home" || [[ ${#pg_home} -gt 80 ]]; then
        pg_home=$(mktemp -d "${TMPDIR:-/tmp}/sagatest-pg.XXXXXX")
        [[ -n $run_user ]] && chown "$run_user:" "$pg_home"
        log "using $pg_home for PostgreSQL data (state dir unsuitable)"
    fi
    printf '%s\n' "$pg_home" >"$STATE_DIR/pg-home"

    # The data dir is throw-away, so skipping initdb's fsync is safe; the
    # server itself keeps fsync/synchronous_commit at their defaults.
    if ! run_as "$run_user" "$bindir/initdb" -D "$pg_home/data" --auth=trust -U postgres \
        --encoding=UTF8 --locale=C --no-sync >"$STATE_DIR/initdb.log" 2>&1; then
        fail_with_log "initdb failed" "$STATE_DIR/initdb.log"
    fi
    # Settings go into the config file (later lines win) rather than pg_ctl -o,
    # which would need shell quoting of the socket path.
    cat >>"$pg_home/data/postgresql.conf" <<EOF

# --- scripts/test-services.sh ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pg_home'
max_connections = 300
shared_buffers = 128MB
EOF

    # pg_ctl detaches the postmaster into its own session with stdio on the
    # log file, so Ctrl-C in the caller's terminal doesn't reach it.
    if ! run_as "$run_user" "$bindir/pg_ctl" -D "$pg_home/data" -l "$pg_home/postgres.log" \
        -w -t "$TIMEOUT" start >"$STATE_DIR/pg_ctl.log" 2>&1; then
        fail_with_log "PostgreSQL did not start on 127.0.0.1:$port" \
            "$STATE_DIR/pg_ctl.log" "$pg_home/postgres.log"
    fi
    read_first_line "$pg_home/data/postmaster.pid" >"$STATE_DIR/postgres.pid"
    echo "$port" >"$STATE_DIR/postgres.port"

    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
            return 0
        fi
        pg_running || fail_with_log "PostgreSQL exited during startup" "$pg_home/postgres.log"
        sleep 0.2
    done
    fail_with_log "PostgreSQL not ready on 127.0.0.1:$port after ${TIMEOUT}s" "$pg_home/postgres.log"
}

start_redis() {
    local port=$1 i
    command -v redis-server >/dev/null 2>&1 ||
        die "redis-server not found; run scripts/install-deps.sh redis"
    # No persistence: the data is throw-away and RDB/AOF writes only slow tests.
    if ! redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --daemonize yes --pidfile "$STATE_DIR/redis.pid" \
        --logfile "$STATE_DIR/redis.log" --dir "$STATE_DIR" >"$STATE_DIR/redis-start.log" 2>&1; then
        fail_with_log "redis-server failed to start on 127.0.0.1:$port" \
            "$STATE_DIR/redis-start.log" "$STATE_DIR/redis.log"
    fi
    echo "$port" >"$STATE_DIR/redis.port"
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if [[ -s $STATE_DIR/redis.pid ]] && redis_ping "$port"; then
            return 0
        fi
        sleep 0.2
    done
    fail_with_log "Redis not ready on 127.0.0.1:$port after ${TIMEOUT}s" "$STATE_DIR/redis.log"
}

cmd_start() {
    local pg_port redis_port
    if [[ -f $STATE_DIR/env ]] && pg_running && redis_running &&
        { ! pulsar_wanted || pulsar_running; }; then
        log "already running, reusing $STATE_DIR"
        print_env
        return 0
    fi
    if [[ -e $STATE_DIR ]]; then
        log "found stale or partial state in $STATE_DIR, cleaning it up"
        cmd_stop
    fi

    mkdir -p "$STATE_DIR"
    # If anything below fails, don't leave a half-started pair behind.
    trap 'cmd_stop >/dev/null 2>&1 || true' EXIT
    read -r pg_port redis_port < <(free_ports 2)
    [[ -n ${pg_port:-} && -n ${redis_port:-} ]] || die "could not find free ports"

    start_postgres "$pg_port"
    start_redis "$redis_port"
    if pulsar_wanted; then
        pulsar_ctl start >/dev/null
    fi

    cat >"$STATE_DIR/env.tmp" <<EOF
export TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres
export TEST_REDIS_URL=redis://127.0.0.1:$redis_port
EOF
    if pulsar_wanted; then
        cat "$PULSAR_DIR/env" >>"$STATE_DIR/env.tmp"
    fi
    mv "$STATE_DIR/env.tmp" "$STATE_DIR/env"
    trap - EXIT
    log "PostgreSQL (pid $(pg_pid)) on 127.0.0.1:$pg_port, Redis (pid $(redis_pid)) on 127.0.0.1:$redis_port"
    log "env file: $STATE_DIR/env"
    print_env
}

stop_redis() {
    local pid
    pid=$(redis_pid)
    alive "$pid" redis-server || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 20; then
        log "redis (pid $pid) ignored SIGTERM, killing"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || true
    fi
    log "stopped redis (pid $pid)"
}

stop_postgres() {
    local pid home owner run_user='' bindir
    pid=$(pg_pid)
    alive "$pid" postgres || return 0
    home=$(pg_home)
    # pg_ctl must run as the data dir's owner; fall back to signals otherwise.
    if [[ -n $home && -d $home/data ]] && bindir=$(pg_bindir 2>/dev/null); then
        owner=$(stat -c %U "$home/data")
        if is_root && [[ $owner != root ]]; then
            run_user=$owner
        fi
        run_as "$run_user" "$bindir/pg_ctl" -D "$home/data" stop -m fast -w -t 30 >/dev/null 2>&1 || true
    fi
    if alive "$pid" postgres; then
        kill -INT "$pid" 2>/dev/null || true # SIGINT = fast shutdown
        if ! wait_gone "$pid" 30; then
            log "postgres (pid $pid) did not stop, sending SIGQUIT"
            kill -QUIT "$pid" 2>/dev/null || true # immediate shutdown
            wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    log "stopped postgres (pid $pid)"
}

cmd_stop() {
    local home
    if [[ ! -e $STATE_DIR ]]; then
        log "nothing to stop ($STATE_DIR does not exist)"
        return 0
    fi
    if [[ -d $PULSAR_DIR ]]; then
        pulsar_ctl stop || true
    fi
    stop_redis
    stop_postgres
    home=$(pg_home)
    # The data dir may live outside the state dir (see start_postgres).
    if [[ -n $home && $home != "$STATE_DIR"/* && -d $home ]]; then
        rm -rf -- "$home"
    fi
    rm -rf -- "$STATE_DIR"
    log "removed $STATE_DIR"
}

cmd_status() {
    local ok=0 pulsar_status
    if pg_running; then
        echo "postgres: running (pid $(pg_pid), 127.0.0.1:$(read_first_line "$STATE_DIR/postgres.port"), data $(pg_home)/data)"
    else
        echo "postgres: not running"
        ok=1
    fi
    if redis_running; then
        echo "redis:    running (pid $(redis_pid), 127.0.0.1:$(read_first_line "$STATE_DIR/redis.port"))"
    else
        echo "redis:    not running"
        ok=1
    fi
    if pulsar_wanted; then
        pulsar_status=$(pulsar_ctl status) || ok=1
        sed '/^env:/d' <<<"$pulsar_status"
    fi
    if [[ $ok -eq 0 && -f $STATE_DIR/env ]]; then
        echo "env:      $STATE_DIR/env"
    fi
    return "$ok"
}

# Sourced (scripts/dev-stack.sh reuses the helpers above): define, don't run.
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    return 0
fi

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status   (state: \${TEST_SERVICES_DIR:-.dev/test-services})" >&2
        exit 2
        ;;
esac
