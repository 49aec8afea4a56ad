#!/usr/bin/env bash
# Heap allocations per request in Shoal's data plane, counted without
# changing the binary: perf uprobes on the allocator's entry points
# (mimalloc's mi_malloc_aligned, mi_zalloc_aligned, mi_realloc_aligned,
# which Rust's global allocator calls) while wrk loads one node over the
# compare.sh backends, after a second of the same load (backend
# connections open, sessions bound). For each `[node] io` (epoll, io_uring):
#   l7       HTTP over client keep-alive
#   l4       TCP pass-through over client keep-alive
#   sticky   HTTP, header-sticky pool, 1 000 rotating session ids
#   close    HTTP with a new client connection per request
# A request over a kept-alive connection should allocate nothing: the
# script fails when l7, l4 or sticky average more than MAX_PER_REQUEST
# allocations per request (default 0.05: the node's own timers, health
# checks and control thread allocate a little all along). close is shown,
# not judged: accepting a connection allocates.
#
# Usage: bench/allocations.sh   (root: uprobes; installs wrk, nginx and
#   linux-perf with apt-get when missing)
#   DURATION=3 CONNECTIONS=64 MAX_PER_REQUEST=0.05 (environment)
# The uprobes slow the node (each allocation traps), so the requests/s
# printed beside the counts are not throughput figures.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-3}
connections=${CONNECTIONS:-64}
limit=${MAX_PER_REQUEST:-0.05}

if [ "$(id -u)" -ne 0 ]; then
    echo "allocations: needs root (perf uprobes); run it as root" >&2
    exit 1
fi
. bench/lib.sh
need wrk wrk
need nginx nginx
need perf linux-perf
need curl curl
shoal_binary

group=shoal_alloc
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/backends.pid" ] && kill "$(cat "$work/backends.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    perf probe -q -d "$group:*" >/dev/null 2>&1 || true
    rm -rf "$work"
}
clean_up_on_exit

# One event per allocator entry point, in a group of our own so that
# cleanup removes exactly these.
perf probe -q -d "$group:*" >/dev/null 2>&1 || true
for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
    if ! perf probe -q -x "$shoal" -a "$group:$f=$f" >/dev/null 2>"$work/probe.err"; then
        echo "allocations: cannot probe $f in $shoal (is mimalloc its global allocator?):" >&2
        cat "$work/probe.err" >&2
        exit 1
    fi
done

start_backends "$work"
sessions_lua "$work/sessions.lua"

# count IO SCENARIO PID URL [WRK ARGS]: one row of the table, after a
# second of the same load unmeasured: the steady state, once the backend
# connections are open and the sessions bound.
count() {
    local io=$1 scenario=$2 pid=$3 url=$4 requests allocs
    shift 4
    wrk -t2 -c"$connections" -d1s "$@" "$url" >/dev/null
    perf stat -x, -e "$group:*" -p "$pid" -o "$work/stat.csv" -- sleep $((duration + 1)) &
    local stat_pid=$!
    sleep 0.3
    wrk -t2 -c"$connections" -d"${duration}s" "$@" "$url" >"$work/wrk.txt"
    wait "$stat_pid"
    requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
    # Error answers take other paths than the ones measured.
    if [ -z "$requests" ] || grep -q "Non-2xx" "$work/wrk.txt"; then
        echo "allocations: $io $scenario: wrk got no clean run:" >&2
        cat "$work/wrk.txt" >&2
        exit 1
    fi
    allocs=$(awk -F, '$3 ~ /'"$group"':/ {n += $1} END {print n + 0}' "$work/stat.csv")
    printf '%s\t%s\t%s\t%s\n' "$io" "$scenario" "$requests" "$allocs" >>"$work/results.tsv"
    printf '  %-8s %-7s %9s requests %9s allocations\n' "$io" "$scenario" "$requests" "$allocs"
}

for io in epoll io_uring; do
    cat >"$work/$io.toml" <<CONF
[node]
id = "alloc-$io"
admin_addr = "127.0.0.1:19951"
io = "$io"

$(web_listener l7 http "127.0.0.1:18080")

$(web_listener l4 tcp "127.0.0.1:18081")

$(web_listener sticky http "127.0.0.1:18082" | sed 's/pool = "web"/pool = "sticky"/')

$(web_pool)

$(web_pool 'sticky = { mode = "header", header = "x-session", ttl = "10m" }' | sed 's/name = "web"/name = "sticky"/')
CONF
    SHOAL_LOG=warn "$shoal" run -c "$work/$io.toml" >"$work/$io.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for port in 18080 18081 18082; do wait_http "http://127.0.0.1:$port/"; done
    count "$io" l7 "$pid" http://127.0.0.1:18080/
    count "$io" l4 "$pid" http://127.0.0.1:18081/
    count "$io" sticky "$pid" http://127.0.0.1:18082/ -s "$work/sessions.lua"
    count "$io" close "$pid" http://127.0.0.1:18080/ -H "Connection: close"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done

python3 - "$work/results.tsv" "$limit" <<'PY'
import sys
limit = float(sys.argv[2])
over = []
print("| io | scenario | requests | allocations | per request |")
print("|---|---|---|---|---|")
for line in open(sys.argv[1]):
    io, scenario, requests, allocs = line.split()
    per = int(allocs) / max(int(requests), 1)
    # The node always allocates something (timers, health checks): none
    # counted means the probes did not fire, not a clean node.
    if int(allocs) == 0:
        print(f"allocations: FAILED: {io} {scenario}: no allocation counted; the probes did not fire")
        sys.exit(1)
    print(f"| {io} | {scenario} | {int(requests)} | {int(allocs)} | {per:.3f} |")
    if scenario != "close" and per > limit:
        over.append(f"{io} {scenario}: {per:.3f}")
if over:
    print(f"allocations: FAILED: more than {limit} allocations per kept-alive request: " + "; ".join(over))
    sys.exit(1)
print(f"allocations: passed: every kept-alive scenario at most {limit} allocations per request")
PY
