# Process and port helpers shared by the service scripts (test-services.sh,
# pulsar-lite.sh, and through test-services.sh dev-stack.sh and bench.sh).
# Source it; set SCRIPT_TAG first to prefix error messages.
# shellcheck shell=bash

# The first line of file $1, or nothing.
read_first_line() {
    local line=''
    [[ -r $1 ]] && IFS= read -r line <"$1"
    printf '%s' "$line"
}

# True if PID $1 has exited (a zombie, which PID 1 may reap late, counts).
gone() {
    ! kill -0 "$1" 2>/dev/null || grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"
}

# True if $1 is a live (not zombie) process named exactly $2 (its
# /proc/PID/comm, at most 15 characters). The name check guards against a
# recycled PID from an old state file, and tells the broker (pulsar-lite)
# from its proxy (pulsar-lite-pro…).
alive() {
    local pid=$1 name=$2 comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    ! gone "$pid" || return 1
    [[ -r /proc/$pid/comm ]] || return 0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$name" ]]
}

# Wait up to $2 seconds for PID $1 to exit.
wait_gone() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        gone "$pid" && return 0
        sleep 0.1
    done
    return 1
}

# ${1:-2} distinct free ports on 127.0.0.1 (all bound at once, so they differ).
free_ports() {
    local n=${1:-2}
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$n"
        return
    fi
    # Fallback: random high ports that nothing answers on.
    local ports=() p
    while [[ ${#ports[@]} -lt $n ]]; do
        p=$((20000 + RANDOM % 40000))
        [[ " ${ports[*]-} " == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            ports+=("$p")
        fi
    done
    echo "${ports[*]}"
}

# Report a failure with the tail of each given log file, then exit.
fail_with_log() {
    local what=$1 logfile
    shift
    printf '%s: error: %s\n' "${SCRIPT_TAG:-$(basename "$0")}" "$what" >&2
    for logfile in "$@"; do
        [[ -s $logfile ]] || continue
        printf -- '--- last lines of %s ---\n' "$logfile" >&2
        tail -n 30 "$logfile" >&2 || true
        printf -- '---\n' >&2
    done
    exit 1
}
