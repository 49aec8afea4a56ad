#!/usr/bin/env bash
# Bulk throughput through Shoal's TCP listener, on epoll
# (node/src/dataplane/copy.rs) and on io_uring
# (node/src/dataplane/uring/copy.rs), both splicing bulk data, measured in
# alternation: iperf3 through each, one stream, upload then download
# (-R), and the proxy's CPU time over both, also per Gbit moved.
#
# Usage: bench/bulk.sh   ROUNDS=3 DURATION=4 (environment), SHOAL_BIN
# Installs iperf3 with apt-get when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need iperf3 iperf3
need python3 python3
shoal_binary
rounds=${ROUNDS:-3}
duration=${DURATION:-4}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/iperf.pid" ] && kill "$(cat "$work/iperf.pid")" 2>/dev/null || true
    rm -rf "$work"
}
clean_up_on_exit

iperf3 -s -D -p 18995 --pidfile "$work/iperf.pid"
declare -A port pid
for io in epoll io_uring; do
    case $io in epoll) port[$io]=18996 ;; io_uring) port[$io]=18997 ;; esac
    cat >"$work/$io.toml" <<CONF
[node]
id = "bulk"
admin_addr = "127.0.0.1:$((port[$io] + 1000))"
io = "$io"

[[listener]]
name = "raw"
bind = "127.0.0.1:${port[$io]}"
protocol = "tcp"
pool = "p"

[[pool]]
name = "p"
[[pool.backend]]
name = "iperf"
address = "127.0.0.1:18995"
CONF
    SHOAL_LOG=warn setsid "$shoal" run -c "$work/$io.toml" >"$work/$io.log" 2>&1 &
    pid[$io]=$!
    pids+=($!)
done
for io in epoll io_uring; do
    for _ in $(seq 50); do
        tcp_io=$(curl -fs "http://127.0.0.1:$((port[$io] + 1000))/status" 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["tcp_io"])' 2>/dev/null) && break
        sleep 0.1
    done
    [ "${tcp_io:-}" = "$io" ] || { echo "bulk: the $io node runs on '${tcp_io:-nothing}'" >&2; cat "$work/$io.log" >&2; exit 1; }
done

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
gbits() { # PORT FLAGS: received Gbit/s of one iperf3 run
    iperf3 -c 127.0.0.1 -p "$1" -t "$duration" $2 -J |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9, 2))'
}
hz=$(getconf CLK_TCK)
echo "bulk: $(nproc) cores, $(uname -r), $rounds rounds, ${duration} s each way"
for r in $(seq "$rounds"); do
    for io in epoll io_uring; do
        before=$(ticks "${pid[$io]}")
        up=$(gbits "${port[$io]}" "")
        down=$(gbits "${port[$io]}" "-R")
        cpu=$(( ($(ticks "${pid[$io]}") - before) * 1000 / hz ))
        per_gbit=$(python3 -c "print(round($cpu / (($up + $down) * $duration), 1))")
        printf "  round %d  %-8s  upload %6s Gbit/s  download %6s Gbit/s  proxy CPU %5d ms over %d s, %5s ms per Gbit\n" \
            "$r" "$io" "$up" "$down" "$cpu" $((2 * duration)) "$per_gbit"
    done
done
