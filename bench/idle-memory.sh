#!/usr/bin/env bash
# Shoal's memory per idle client connection, on its HTTP (L7) and TCP (L4)
# listeners and for an upgraded HTTP connection (WebSocket-style: the
# client asked for an upgrade, got the backend's 101 and now says
# nothing), on epoll and on io_uring: the growth of the node's RSS between
# FEW and MANY client connections that have sent nothing, divided by the
# difference. The heap grows in 2 MiB huge pages, so a figure from one
# count (as compare.sh's, at 10 000 connections) moves by up to 2 MiB over
# the count; the slope over 8 000 connections moves by at most 260 bytes.
# An idle L4 connection also holds a backend connection (Shoal connects on
# accept), so the backends here accept up to MANY + 1 000; so does an
# upgraded one (bench/upgrade_backend.py is its backend).
#
# Usage: bench/idle-memory.sh   FEW=1000 MANY=9000 (environment)
# Installs nginx with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

few=${FEW:-1000}
many=${MANY:-9000}

. bench/lib.sh
need nginx nginx
need curl curl
need python3 python3
need ss iproute2
shoal_binary

work=$(mktemp -d)
node_pid=""
upgrade_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
    [ -n "$upgrade_pid" ] && kill "$upgrade_pid" 2>/dev/null || true
    [ -f "$work/backends.pid" ] && kill "$(cat "$work/backends.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
clean_up_on_exit

ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
# An L4 connection is two descriptors in Shoal and one in the backends.
if [ $((2 * many + 200)) -gt "$nofile" ]; then
    echo "idle-memory: the open-files hard limit is $nofile: MANY=$many needs $((2 * many + 200))" >&2
    exit 1
fi
start_backends "$work" $((many + 1000))
python3 bench/upgrade_backend.py 18010 >"$work/upgrade-backend.log" 2>&1 &
upgrade_pid=$!
for try in $(seq 51); do
    (exec 3<>/dev/tcp/127.0.0.1/18010) 2>/dev/null && break
    if [ "$try" = 51 ]; then
        echo "idle-memory: the upgrade backend did not listen on 18010 within 5 s:" >&2
        cat "$work/upgrade-backend.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "idle-memory: $(nproc) cores, $(uname -r), $(date -u +%F); bytes per idle connection, RSS slope from $few to $many connections"
printf "%-10s %-8s %10s %10s %10s\n" io listener "RSS few" "RSS many" "bytes/conn"
for io in epoll io_uring; do
    cat >"$work/shoal.toml" <<CONF
[node]
id = "idle"
admin_addr = "127.0.0.1:19961"
io = "$io"

$(web_listener l7 http "127.0.0.1:18680")

$(web_listener l4 tcp "127.0.0.1:18681")

[[listener]]
name = "upgraded"
bind = "127.0.0.1:18682"
protocol = "http"
pool = "upgrade"
idle_timeout = "60s"

$(web_pool)

[[pool]]
name = "upgrade"
health = { kind = "tcp", interval = "2s", timeout = "1s" }
[[pool.backend]]
name = "u1"
address = "127.0.0.1:18010"
CONF
    # A node of its own for each listener: memory an earlier listener's
    # connections left in the heap would serve, or be trimmed during, the
    # next one's count.
    for listener in l7:18680 l4:18681 upgraded:18682; do
        name=${listener%%:*} port=${listener#*:}
        SHOAL_LOG=warn setsid "$shoal" run -c "$work/shoal.toml" >"$work/shoal-$io-$name.log" 2>&1 &
        node_pid=$!
        for _ in $(seq 100); do
            curl -fs http://127.0.0.1:19961/healthz >/dev/null 2>&1 && break
            sleep 0.1
        done
        ran_on=$(curl -fs http://127.0.0.1:19961/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["tcp_io"])')
        [ "$ran_on" = "$io" ] || echo "idle-memory: WARNING: asked for $io, the node runs on $ran_on"
        upgrade=""
        [ "$name" = upgraded ] && upgrade=1
        low=$(HOLD_UPGRADE=$upgrade rss_holding "$work" "$port" "$few" "$node_pid")
        high=$(HOLD_UPGRADE=$upgrade rss_holding "$work" "$port" "$many" "$node_pid")
        printf "%-10s %-8s %7s KiB %7s KiB %10s\n" "$ran_on" "$name" "$low" "$high" $(((high - low) * 1024 / (many - few)))
        kill "$node_pid"
        wait "$node_pid" 2>/dev/null || true
        node_pid=""
    done
done
