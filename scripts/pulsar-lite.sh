#!/usr/bin/env bash
# A private Pulsar for development and tests: pulsar-lite (a Pulsar-protocol
# broker from PyPI; there is no Docker here) with tools/pulsar-lite-proxy in
# front, both on 127.0.0.1. The proxy is what makes the `pulsar` crate able to
# consume from pulsar-lite; see TROUBLESHOOTING.md.
#
#   scripts/pulsar-lite.sh start            install if needed, start both, print the env
#   scripts/pulsar-lite.sh stop [--purge]   stop both (--purge also deletes the data)
#   scripts/pulsar-lite.sh status           exit 0 only when both run
#   scripts/pulsar-lite.sh env              print the env file
#   scripts/pulsar-lite.sh restart-broker [--kill]
#   scripts/pulsar-lite.sh stop-broker [--kill]
#   scripts/pulsar-lite.sh start-broker     the broker alone, on the same port and
#                                           data; the proxy keeps running
#   scripts/pulsar-lite.sh install [--check]
#                                           install pulsar-lite (--check: only look),
#                                           print the binary's path
#
# State (data, config, logs, PIDs, env file) lives in
# ${PULSAR_LITE_DIR:-.dev/pulsar-lite}. After `start`, `source <state dir>/env`
# exports:
#   TEST_PULSAR_URL         the proxy: what clients (the pulsar crate) use
#   TEST_PULSAR_DIRECT_URL  pulsar-lite itself (the pulsar crate cannot consume there)
#   TEST_PULSAR_DIR         the state dir, for the broker subcommands:
#   TEST_PULSAR_CTL         this script, so a test can run
#                           PULSAR_LITE_DIR=$TEST_PULSAR_DIR $TEST_PULSAR_CTL restart-broker
#
# Ports are free ones unless fixed with PULSAR_PROXY_PORT (e.g. 6650, Pulsar's
# standard port), PULSAR_LITE_PORT and PULSAR_LITE_METRICS_PORT.
# PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES sets the broker's max_message_size_bytes
# (tests of a broker that refuses a message; `start` writes it to the config).
# PULSAR_LITE_BIN / PULSAR_PROXY_BIN use prebuilt binaries instead.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_TAG=pulsar-lite
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
SELF=$ROOT/scripts/pulsar-lite.sh
PULSAR_LITE_VERSION=0.2.0
STATE_DIR=${PULSAR_LITE_DIR:-$ROOT/.dev/pulsar-lite}
# Absolute, because the path ends up in the config and in the env file.
case $STATE_DIR in
    /*) ;;
    *) STATE_DIR=$PWD/$STATE_DIR ;;
esac
STATE_DIR=${STATE_DIR%/}
# Where `install` puts pulsar-lite when python3 can't already import it.
# Outside the state dir, so `stop --purge` doesn't mean downloading it again.
TOOLS_DIR=${PULSAR_LITE_TOOLS_DIR:-$ROOT/.dev/tools}
TIMEOUT=${PULSAR_LITE_TIMEOUT:-60}

# /proc/PID/comm holds at most 15 characters.
BROKER_COMM=pulsar-lite
PROXY_COMM=pulsar-lite-pro

log() { printf 'pulsar-lite: %s\n' "$*" >&2; }
die() { printf 'pulsar-lite: error: %s\n' "$*" >&2; exit 1; }

accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

little_endian() {
    [[ $(printf '\001\000' | od -An -tu2 | tr -d ' \n') == 1 ]]
}

# The TCP ports PID $1 listens on, one "ADDRESS PORT" per line, ADDRESS being
# "loopback" or "other". Read from /proc, so it needs neither ss nor root.
listeners() {
    local pid=$1 fd link inodes=' ' addr port loop4
    for fd in "/proc/$pid/fd/"*; do
        link=$(readlink "$fd" 2>/dev/null) || continue
        [[ $link == socket:\[*\] ]] && inodes+="${link//[!0-9]/} "
    done
    [[ $inodes != ' ' ]] || return 0
    # 127.0.0.0/8 in /proc/net/tcp's hex: the first byte of the address in
    # memory order comes first (…7F at the end on little-endian hosts).
    if little_endian; then loop4='^[0-9A-F]{6}7F$'; else loop4='^7F[0-9A-F]{6}$'; fi
    awk -v inodes="$inodes" 'FNR > 1 && $4 == "0A" && index(inodes, " " $10 " ") { print $2 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        while IFS=: read -r addr port; do
            if [[ $addr =~ $loop4 ]] ||
                [[ $addr == 00000000000000000000000001000000 || $addr == 00000000000000000000000000000001 ]] ||
                [[ $addr =~ ^0000000000000000FFFF0000 && ${addr:24} =~ $loop4 ]]; then
                echo "loopback $((16#$port))"
            else
                echo "other $((16#$port))"
            fi
        done
}

broker_pid() { read_first_line "$STATE_DIR/broker.pid"; }
proxy_pid() { read_first_line "$STATE_DIR/proxy.pid"; }
broker_running() { alive "$(broker_pid)" "$BROKER_COMM"; }
proxy_running() { alive "$(proxy_pid)" "$PROXY_COMM"; }

# Serialises commands on one state dir (say, two tests restarting the same
# broker). Children get the descriptor closed, or they'd hold the lock forever.
lock_state() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    flock -w "$TIMEOUT" 9 || die "another pulsar-lite.sh command holds $STATE_DIR/.lock"
}

# --- installing -------------------------------------------------------------

# pulsar-lite's binary if the pinned version is importable or was installed
# by us before; nothing otherwise.
find_broker_bin() {
    local dir
    if [[ -n ${PULSAR_LITE_BIN:-} ]]; then
        [[ -x $PULSAR_LITE_BIN ]] || die "PULSAR_LITE_BIN=$PULSAR_LITE_BIN is not executable"
        printf '%s' "$PULSAR_LITE_BIN"
        return
    fi
    dir=$(python3 -c '
import os, sys
import pulsar_lite
if pulsar_lite.__version__ == sys.argv[1]:
    print(os.path.dirname(pulsar_lite.__file__))
' "$PULSAR_LITE_VERSION" 2>/dev/null || true)
    if [[ -n $dir && -x $dir/bin/pulsar-lite ]]; then
        printf '%s' "$dir/bin/pulsar-lite"
        return
    fi
    dir=$TOOLS_DIR/pulsar-lite-$PULSAR_LITE_VERSION/pulsar_lite/bin
    if [[ -x $dir/pulsar-lite ]]; then
        printf '%s' "$dir/pulsar-lite"
    fi
}

install_broker() {
    local bin target
    bin=$(find_broker_bin)
    if [[ -n $bin ]]; then
        printf '%s' "$bin"
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 not found; pulsar-lite is installed with pip"
    python3 -m pip --version >/dev/null 2>&1 ||
        die "pip not found; install it (apt-get install python3-pip) and retry"
    # Into a directory of our own, with --no-deps: the wheel's binary is all we
    # use (not its Python client), and this works without root, outside a
    # virtualenv and on "externally managed" system Pythons alike.
    target=$TOOLS_DIR/pulsar-lite-$PULSAR_LITE_VERSION
    log "installing pulsar-lite $PULSAR_LITE_VERSION into $target"
    rm -rf -- "$target.tmp"
    mkdir -p "$TOOLS_DIR"
    python3 -m pip install --quiet --no-input --disable-pip-version-check --no-deps \
        --target "$target.tmp" "pulsar-lite==$PULSAR_LITE_VERSION" >&2 ||
        die "pip install pulsar-lite==$PULSAR_LITE_VERSION failed"
    rm -rf -- "$target"
    mv "$target.tmp" "$target"
    bin=$target/pulsar_lite/bin/pulsar-lite
    [[ -x $bin ]] || die "the pulsar-lite wheel has no binary at $bin"
    "$bin" --help >/dev/null 2>&1 || die "$bin does not run on this machine"
    printf '%s' "$bin"
}

proxy_bin() {
    local target_dir
    if [[ -n ${PULSAR_PROXY_BIN:-} ]]; then
        [[ -x $PULSAR_PROXY_BIN ]] || die "PULSAR_PROXY_BIN=$PULSAR_PROXY_BIN is not executable"
        printf '%s' "$PULSAR_PROXY_BIN"
        return
    fi
    # A debug build: it shares target/ with the tests' builds, and the
    # proxy's work (a CRC per message) is far from being the bottleneck.
    (cd "$ROOT" && cargo build --quiet -p pulsar-lite-proxy >&2) || die "building pulsar-lite-proxy failed"
    target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
    [[ -x $target_dir/debug/pulsar-lite-proxy ]] || die "no proxy binary at $target_dir/debug/pulsar-lite-proxy"
    printf '%s' "$target_dir/debug/pulsar-lite-proxy"
}

# --- the broker ---------------------------------------------------------------

write_config() {
    local port=$1 metrics_port=$2 level=${PULSAR_LITE_LOG_LEVEL:-info}
    local max_size=${PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES:-}
    # Anything else could break the TOML, which pulsar-lite would then ignore.
    [[ $level =~ ^(error|warn|info|debug|trace)$ ]] ||
        die "PULSAR_LITE_LOG_LEVEL must be error, warn, info, debug or trace, not '$level'"
    [[ -z $max_size || $max_size =~ ^[1-9][0-9]*$ ]] ||
        die "PULSAR_LITE_MAX_MESSAGE_SIZE_BYTES must be a positive integer, not '$max_size'"
    # pulsar-lite silently falls back to defaults when its config is missing
    # or invalid, and its default metrics address is 0.0.0.0:8080; start_broker
    # checks what it actually listens on.
    cat >"$STATE_DIR/pulsar-lite.toml" <<EOF
# Written by scripts/pulsar-lite.sh; rewritten on every start.
addr = "127.0.0.1:$port"
db_path = "$STATE_DIR/data/pulsar-lite"
log_level = "$level"
${max_size:+max_message_size_bytes = $max_size}

[metrics]
enabled = true
addr = "127.0.0.1:$metrics_port"
EOF
}

# Start pulsar-lite on the port, data and config recorded in the state dir,
# and wait until it listens on them, and only on loopback.
start_broker() {
    local bin port metrics_port pid i found other
    bin=$(install_broker)
    port=$(read_first_line "$STATE_DIR/broker.port")
    metrics_port=$(read_first_line "$STATE_DIR/metrics.port")
    [[ -n $port && -n $metrics_port && -f $STATE_DIR/pulsar-lite.toml ]] ||
        die "no broker configuration in $STATE_DIR; run '$SELF start' first"
    if accepts "$port"; then
        die "127.0.0.1:$port is already in use by another process"
    fi
    mkdir -p "$STATE_DIR/data"
    # setsid: its own session, so a Ctrl-C meant for the caller doesn't reach
    # it; no inherited descriptors, so callers capturing output don't wait on it.
    (cd "$STATE_DIR" && exec setsid "$bin" --config "$STATE_DIR/pulsar-lite.toml" \
        --addr "127.0.0.1:$port" --db-path "$STATE_DIR/data/pulsar-lite" \
        </dev/null >>"$STATE_DIR/broker.log" 2>&1 9>&-) &
    pid=$!
    echo "$pid" >"$STATE_DIR/broker.pid"

    for ((i = 0; i < TIMEOUT * 10; i++)); do
        # Not yet named pulsar-lite right after the fork, before the exec.
        gone "$pid" && fail_with_log "pulsar-lite exited during startup" "$STATE_DIR/broker.log"
        alive "$pid" "$BROKER_COMM" || { sleep 0.1; continue; }
        found=$(listeners "$pid")
        other=$(grep '^other' <<<"$found" || true)
        if [[ -n $other ]]; then
            stop_broker KILL >/dev/null 2>&1 || true
            fail_with_log "pulsar-lite listened on a non-loopback address (port ${other#other }): was $STATE_DIR/pulsar-lite.toml ignored?" \
                "$STATE_DIR/broker.log"
        fi
        if grep -qx "loopback $port" <<<"$found" && grep -qx "loopback $metrics_port" <<<"$found" &&
            accepts "$port"; then
            return 0
        fi
        sleep 0.1
    done
    stop_broker KILL >/dev/null 2>&1 || true
    fail_with_log "pulsar-lite not listening on 127.0.0.1:$port and :$metrics_port after ${TIMEOUT}s" \
        "$STATE_DIR/broker.log"
}

# Stop pulsar-lite with signal $1 (TERM or KILL). Its data survives either.
stop_broker() {
    local signal=${1:-TERM} pid
    pid=$(broker_pid)
    rm -f -- "$STATE_DIR/broker.pid"
    alive "$pid" "$BROKER_COMM" || return 0
    kill "-$signal" "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 20; then
        log "pulsar-lite (pid $pid) ignored SIG$signal, killing"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "pulsar-lite (pid $pid) does not die"
    fi
    log "stopped pulsar-lite (pid $pid, SIG$signal)"
}

# --- the proxy ----------------------------------------------------------------

# Start the proxy (binary $1) in front of the broker, as recorded in the state dir.
start_proxy() {
    local bin=$1 port broker_port pid i
    port=$(read_first_line "$STATE_DIR/proxy.port")
    broker_port=$(read_first_line "$STATE_DIR/broker.port")
    if accepts "$port"; then
        die "127.0.0.1:$port is already in use by another process"
    fi
    (exec setsid "$bin" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$broker_port" \
        </dev/null >>"$STATE_DIR/proxy.log" 2>&1 9>&-) &
    pid=$!
    echo "$pid" >"$STATE_DIR/proxy.pid"
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        gone "$pid" && fail_with_log "pulsar-lite-proxy exited during startup" "$STATE_DIR/proxy.log"
        if alive "$pid" "$PROXY_COMM" && grep -qx "loopback $port" < <(listeners "$pid") && accepts "$port"; then
            return 0
        fi
        sleep 0.1
    done
    fail_with_log "pulsar-lite-proxy not listening on 127.0.0.1:$port after ${TIMEOUT}s" "$STATE_DIR/proxy.log"
}

stop_proxy() {
    local pid
    pid=$(proxy_pid)
    rm -f -- "$STATE_DIR/proxy.pid"
    alive "$pid" "$PROXY_COMM" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 10; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || true
    fi
    log "stopped pulsar-lite-proxy (pid $pid)"
}

# --- commands -----------------------------------------------------------------

print_env() { cat "$STATE_DIR/env"; }

# True if the ports asked for with PULSAR_*_PORT are the ones in use.
same_ports() {
    [[ -z ${PULSAR_LITE_PORT:-} || $PULSAR_LITE_PORT == "$(read_first_line "$STATE_DIR/broker.port")" ]] &&
        [[ -z ${PULSAR_PROXY_PORT:-} || $PULSAR_PROXY_PORT == "$(read_first_line "$STATE_DIR/proxy.port")" ]] &&
        [[ -z ${PULSAR_LITE_METRICS_PORT:-} || $PULSAR_LITE_METRICS_PORT == "$(read_first_line "$STATE_DIR/metrics.port")" ]]
}

cmd_start() {
    local ports broker_port proxy_port metrics_port proxy
    lock_state
    if [[ -f $STATE_DIR/env ]] && broker_running && proxy_running; then
        if same_ports; then
            log "already running, reusing $STATE_DIR"
            print_env
            return 0
        fi
        log "running on other ports than PULSAR_*_PORT ask for; restarting"
    fi
    # Both binaries first: a build waiting for cargo's lock shouldn't leave
    # a broker running alone meanwhile.
    install_broker >/dev/null
    proxy=$(proxy_bin)
    # Half-started or crashed earlier: start both again (the data stays).
    stop_proxy
    stop_broker
    rm -f -- "$STATE_DIR/env"

    read -r -a ports < <(free_ports 3) || die "could not find free ports"
    broker_port=${PULSAR_LITE_PORT:-${ports[0]}}
    proxy_port=${PULSAR_PROXY_PORT:-${ports[1]}}
    metrics_port=${PULSAR_LITE_METRICS_PORT:-${ports[2]}}
    echo "$broker_port" >"$STATE_DIR/broker.port"
    echo "$proxy_port" >"$STATE_DIR/proxy.port"
    echo "$metrics_port" >"$STATE_DIR/metrics.port"
    write_config "$broker_port" "$metrics_port"

    # If anything below fails, don't leave half of it running.
    trap 'stop_proxy >/dev/null 2>&1 || true; stop_broker KILL >/dev/null 2>&1 || true' EXIT
    start_broker
    start_proxy "$proxy"
    trap - EXIT

    cat >"$STATE_DIR/env.tmp" <<EOF
export TEST_PULSAR_URL=pulsar://127.0.0.1:$proxy_port
export TEST_PULSAR_DIRECT_URL=pulsar://127.0.0.1:$broker_port
export TEST_PULSAR_DIR=$STATE_DIR
export TEST_PULSAR_CTL=$SELF
EOF
    mv "$STATE_DIR/env.tmp" "$STATE_DIR/env"
    log "pulsar-lite (pid $(broker_pid)) on 127.0.0.1:$broker_port (metrics :$metrics_port)," \
        "proxy (pid $(proxy_pid)) on 127.0.0.1:$proxy_port; data in $STATE_DIR/data"
    print_env
}

cmd_stop() {
    local purge=${1:-}
    if [[ ! -d $STATE_DIR ]]; then
        log "nothing to stop ($STATE_DIR does not exist)"
        return 0
    fi
    lock_state
    stop_proxy
    stop_broker
    rm -f -- "$STATE_DIR/env"
    if [[ $purge == --purge ]]; then
        rm -rf -- "$STATE_DIR"
        log "removed $STATE_DIR"
    fi
}

cmd_status() {
    local ok=0
    if broker_running; then
        echo "pulsar-lite: running (pid $(broker_pid), 127.0.0.1:$(read_first_line "$STATE_DIR/broker.port"), data $STATE_DIR/data)"
    else
        echo "pulsar-lite: not running"
        ok=1
    fi
    if proxy_running; then
        echo "proxy:       running (pid $(proxy_pid), 127.0.0.1:$(read_first_line "$STATE_DIR/proxy.port"))"
    else
        echo "proxy:       not running"
        ok=1
    fi
    if [[ $ok -eq 0 && -f $STATE_DIR/env ]]; then
        echo "env:         $STATE_DIR/env"
    fi
    return "$ok"
}

# The broker subcommands act on an instance started before; a test that
# forgot PULSAR_LITE_DIR would otherwise be told about a default one.
require_started() {
    [[ -f $STATE_DIR/broker.port ]] ||
        die "no pulsar-lite was started in $STATE_DIR (from a test: PULSAR_LITE_DIR=\$TEST_PULSAR_DIR \$TEST_PULSAR_CTL $1)"
}

signal_arg() {
    case ${1:-} in
        '') echo TERM ;;
        --kill) echo KILL ;;
        *) die "unknown option '$1' (expected --kill)" ;;
    esac
}

case ${1:-} in
    start) cmd_start ;;
    stop)
        [[ -z ${2:-} || $2 == --purge ]] || die "unknown option '$2' (expected --purge)"
        cmd_stop "${2:-}"
        ;;
    status) cmd_status ;;
    env)
        [[ -f $STATE_DIR/env ]] || die "not started ($STATE_DIR/env does not exist)"
        print_env
        ;;
    install)
        if [[ ${2:-} == --check ]]; then
            bin=$(find_broker_bin)
            [[ -n $bin ]] || exit 1
            echo "$bin"
        else
            install_broker && echo
        fi
        ;;
    stop-broker)
        require_started stop-broker
        sig=$(signal_arg "${2:-}")
        lock_state
        stop_broker "$sig"
        ;;
    start-broker)
        require_started start-broker
        lock_state
        broker_running && die "pulsar-lite is already running (pid $(broker_pid))"
        start_broker
        log "pulsar-lite (pid $(broker_pid)) back on 127.0.0.1:$(read_first_line "$STATE_DIR/broker.port")"
        ;;
    restart-broker)
        require_started restart-broker
        sig=$(signal_arg "${2:-}")
        lock_state
        stop_broker "$sig"
        start_broker
        log "pulsar-lite (pid $(broker_pid)) back on 127.0.0.1:$(read_first_line "$STATE_DIR/broker.port")"
        ;;
    *)
        echo "usage: $0 start|stop [--purge]|status|env|install [--check]|restart-broker [--kill]|stop-broker [--kill]|start-broker" >&2
        echo "       (state: \${PULSAR_LITE_DIR:-.dev/pulsar-lite})" >&2
        exit 2
        ;;
esac
