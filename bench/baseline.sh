#!/usr/bin/env bash
# Baseline throughput of one Shoal node: wrk over keep-alive connections to
# Shoal's HTTP (L7) and TCP (L4) listeners in front of three local nginx
# backends, plus the backends alone for reference. Prints requests/s and
# p99 latency per target. Installs wrk and nginx with apt-get when missing.
# Shoal runs on SHOAL_IO (`[node] io`: io_uring, the node's default since
# 2026-12-04; the runs recorded before it were on epoll, then the default).
#
# Usage: bench/baseline.sh [DURATION_SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
connections=${2:-64}
threads=2

. bench/lib.sh
need wrk wrk
need nginx nginx

shoal_binary

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/backends.pid" ] && kill "$(cat "$work/backends.pid")" 2>/dev/null || true
    rm -rf "$work"
}
clean_up_on_exit

start_backends "$work"

cat >"$work/shoal.toml" <<CONF
[node]
id = "bench"
admin_addr = "127.0.0.1:19901"
io = "${SHOAL_IO:-io_uring}"

[[listener]]
name = "l7"
bind = "127.0.0.1:18080"
protocol = "http"
pool = "web"

[[listener]]
name = "l4"
bind = "127.0.0.1:18081"
protocol = "tcp"
pool = "web"

$(web_pool)
CONF
# Its own session, as a service runs (see compare.sh: autogroup scheduling
# would otherwise share its CPU with wrk's).
SHOAL_LOG=warn setsid "$shoal" run -c "$work/shoal.toml" &
pids+=($!)
for _ in $(seq 100); do
    curl -fs http://127.0.0.1:19901/healthz >/dev/null 2>&1 && break
    sleep 0.1
done

run() {
    local name=$1 url=$2
    wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$url" >"$work/$name.txt"
    local rps p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$work/$name.txt")
    printf "%-28s %12s %10s\n" "$name" "$rps" "$p99"
}

echo "machine: $(nproc) cores, $(uname -r); wrk -t$threads -c$connections -d${duration}s; $(date -u +%F); shoal on $(curl -fs http://127.0.0.1:19901/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["tcp_io"])' 2>/dev/null || echo '?')"
printf "%-28s %12s %10s\n" "target" "requests/s" "p99"
run "nginx backend alone" http://127.0.0.1:18001/
run "shoal L7 (http, least_conn)" http://127.0.0.1:18080/
run "shoal L4 (tcp, least_conn)" http://127.0.0.1:18081/
