#!/usr/bin/env bash
# Instructions per request in user space, counted by callgrind: Shoal's
# L7 and L4 paths and the bench/forwarder yardstick, each proxying
# `wrk -t1 -c8` to the three nginx backends of bench/lib.sh.
#
# Wall-clock runs on a shared 2-core VM swing by a third from one minute
# to the next (docs/benchmarks.md); an instruction count does not: it is
# the same for the same binary and traffic whatever else the machine
# does, so it shows a change to the request path of a few percent that
# compare.sh cannot. It says nothing about the kernel's share (about
# three quarters of a proxy's time here) or about cache misses.
#
# Each proxy runs under `valgrind --tool=callgrind` with one data-plane
# worker, Shoal on epoll (valgrind cannot run its io_uring rings);
# after a 3 s warm-up the counters are zeroed and counted over DURATION
# seconds without traffic (health checks, timers), then over
# DURATION seconds of wrk; the difference is divided by the requests wrk
# completed, so the count does not depend on the request rate valgrind
# allows.
#
# Usage: bench/instructions.sh   DURATION=10, SHOAL_BIN or FORWARDER_BIN
# to count prebuilt binaries, PROFILE_DIR to keep each proxy's callgrind
# profile under load there, for callgrind_annotate (environment)
# Installs wrk, nginx and valgrind with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}

. bench/lib.sh
need wrk wrk
need nginx nginx
need valgrind valgrind
need callgrind_control valgrind
need curl curl
shoal_binary
if [ -z "${FORWARDER_BIN:-}" ]; then
    cargo build --release --quiet -p shoal-bench-forwarder
fi
forwarder="${FORWARDER_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/forwarder}"

work=$(mktemp -d)
proxy=""
cleanup() {
    [ -n "$proxy" ] && kill "$proxy" 2>/dev/null
    [ -f "$work/backends.pid" ] && kill "$(cat "$work/backends.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
clean_up_on_exit

start_backends "$work"
cat >"$work/shoal.toml" <<CONF
[node]
id = "instructions"
# Valgrind 3.19 cannot run the io_uring rings (the node never starts
# serving), so this counts the epoll path: Shoal's HTTP/1.1 code is the
# same on both, the runtime around it is not.
io = "epoll"
admin_addr = "127.0.0.1:19951"
workers = 1

[[listener]]
name = "l7"
bind = "127.0.0.1:18580"
protocol = "http"
pool = "web"
idle_timeout = "60s"

[[listener]]
name = "l4"
bind = "127.0.0.1:18581"
protocol = "tcp"
pool = "web"
idle_timeout = "60s"

$(web_pool)
CONF

# count NAME PORT COMMAND...: instructions per request through PORT.
count() {
    local name=$1 port=$2 out="$work/${1// /-}.callgrind" requests idle total
    shift 2
    SHOAL_LOG=warn valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$out" "$@" >"$work/$name.log" 2>&1 &
    proxy=$!
    local up=""
    for _ in $(seq 300); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/" && up=1 && break
        sleep 0.2
    done
    if [ -z "$up" ]; then
        echo "instructions: $name never answered on port $port (see $work/$name.log)" >&2
        kill -9 "$proxy" 2>/dev/null
        exit 1
    fi
    wrk -t1 -c8 -d3s "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$proxy" >/dev/null
    sleep "$duration"
    callgrind_control -d "$proxy" >/dev/null
    requests=$(wrk -t1 -c8 -d"${duration}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
    callgrind_control -d "$proxy" >/dev/null
    kill "$proxy"
    if [ -n "${PROFILE_DIR:-}" ]; then
        mkdir -p "$PROFILE_DIR"
        cp "$out.2" "$PROFILE_DIR/${name// /-}.callgrind"
    fi
    wait "$proxy" 2>/dev/null || true
    proxy=""
    # Each dump is a numbered part and restarts the count: .1 idle, .2 load.
    idle=$(awk '/^summary:/ {print $2}' "$out.1")
    total=$(awk '/^summary:/ {print $2}' "$out.2")
    if [ -z "$requests" ] || [ "$requests" -eq 0 ] || [ -z "$idle" ] || [ -z "$total" ]; then
        echo "instructions: no count for $name (see $work/$name.log)" >&2
        exit 1
    fi
    printf '%-14s %8d requests  %7d instructions/request  (idle %d per second)\n' \
        "$name" "$requests" $(((total - idle) / requests)) $((idle / duration))
}

echo "instructions: user-space instructions per request (callgrind), wrk -t1 -c8, ${duration}s each"
count "shoal L7" 18580 "$shoal" run -c "$work/shoal.toml"
count "shoal L4" 18581 "$shoal" run -c "$work/shoal.toml"
count "forwarder L7" 18580 "$forwarder" 127.0.0.1:18580 127.0.0.1:18001 127.0.0.1:18002 127.0.0.1:18003
