# Shared by the bench scripts (sourced from the repository root).

# need COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is
# missing (as root), else stops with a clear message.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing $2 with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "bench needs $1 (Debian package $2); run as root or install it" >&2
        exit 1
    fi
}

# clean_up_on_exit: runs the script's cleanup function when it exits,
# also when interrupted (INT, TERM), which then ends the script instead
# of letting it carry on against killed processes.
clean_up_on_exit() {
    trap cleanup EXIT
    trap "exit 130" INT TERM
}

# Sets $shoal: a release build of this tree, or SHOAL_BIN (e.g. an older
# commit's build, for comparison).
shoal_binary() {
    if [ -z "${SHOAL_BIN:-}" ]; then
        cargo build --release --quiet -p shoal-node --bin shoal
    fi
    shoal="${SHOAL_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/shoal}"
}

# start_backends DIR [CONNECTIONS]: three nginx backends answering a small
# fixed body on 127.0.0.1:18001-18003 (one nginx, one worker, keep-alive,
# up to CONNECTIONS at once, 4096 unless given); its pid file is
# DIR/backends.pid.
start_backends() {
    local connections=${2:-4096}
    cat >"$1/backends.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $((connections + 100));
pid $1/backends.pid;
error_log $1/backends-error.log warn;
events { worker_connections $connections; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server { listen 127.0.0.1:18001; location / { return 200 "backend 1\n"; } }
    server { listen 127.0.0.1:18002; location / { return 200 "backend 2\n"; } }
    server { listen 127.0.0.1:18003; location / { return 200 "backend 3\n"; } }
}
CONF
    nginx -c "$1/backends.conf" -p "$1"
}

# haproxy_servers: the start_backends backends as HAProxy server lines,
# health-checked as Shoal's web_pool is (HTTP every 2 s; the backend
# section adds `option httpchk GET /`).
haproxy_servers() {
    local i
    for i in 1 2 3; do echo "    server b$i 127.0.0.1:1800$i check inter 2s"; done
}

# web_listener NAME PROTOCOL BIND: a Shoal listener for web_pool's pool,
# as TOML on stdout (idle connections kept 60 s, as HAProxy's and nginx's
# in compare.sh).
web_listener() {
    cat <<CONF
[[listener]]
name = "$1"
bind = "$3"
protocol = "$2"
pool = "web"
idle_timeout = "60s"
CONF
}

# web_pool [EXTRA_TOML]: Shoal's pool "web" over the start_backends
# backends (least_conn, HTTP health checks every 2 s), as TOML on stdout.
web_pool() {
    cat <<CONF
[[pool]]
name = "web"
algorithm = "least_conn"
keepalive_timeout = "60s"
health = { kind = "http", path = "/", interval = "2s", timeout = "1s" }
${1:-}
[[pool.backend]]
name = "b1"
address = "127.0.0.1:18001"
[[pool.backend]]
name = "b2"
address = "127.0.0.1:18002"
[[pool.backend]]
name = "b3"
address = "127.0.0.1:18003"
CONF
}

# cluster_node I PREFIX DIR [EXTRA]: the [node] and [cluster] sections of node lbI
# of a three-node cluster "bench" on loopback: admin on port PREFIX1I,
# gossip PREFIX2I (seeded by node 1), replication PREFIX3I; certificates
# and gossip key from `shoal certs --dir DIR --nodes lb1,lb2,lb3`; EXTRA,
# if given, is more [node] lines.
cluster_node() {
    cat <<CONF
[node]
id = "lb$1"
admin_addr = "127.0.0.1:${2}1$1"
${4:-}

[cluster]
name = "bench"
gossip_addr = "127.0.0.1:${2}2$1"
replication_addr = "127.0.0.1:${2}3$1"
seeds = ["127.0.0.1:${2}21"]
gossip_key_file = "$3/gossip.key"
tls = { ca = "$3/ca.pem", cert = "$3/lb$1.pem", key = "$3/lb$1.key" }
CONF
}

# rss_kib PID...: their total VmRSS in KiB.
rss_kib() {
    local total=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# rss_holding DIR PORT COUNT PID...: the total RSS in KiB of the PIDs
# while COUNT idle connections (bench/hold_connections.py, status in
# DIR/hold.txt) are open to 127.0.0.1:PORT, once it stops growing (two
# equal samples 200 ms apart, 5 s at most: the proxy has accepted them
# all). The connections are closed, and gone from the kernel (10 s at
# most), when it returns; fails, saying why, if not all of them opened.
# With HOLD_UPGRADE=1 in its environment, each connection is an upgraded
# one (hold_connections.py's "upgrade").
rss_holding() {
    local dir=$1 port=$2 count=$3 prev=-1 now="" held
    shift 3
    exec {held}> >(python3 bench/hold_connections.py 127.0.0.1 "$port" "$count" ${HOLD_UPGRADE:+upgrade} >"$dir/hold.txt")
    for _ in $(seq 300); do
        grep -q . "$dir/hold.txt" 2>/dev/null && break
        sleep 0.1
    done
    for _ in $(seq 25); do
        now=$(rss_kib "$@")
        [ "$now" = "$prev" ] && break
        prev=$now
        sleep 0.2
    done
    exec {held}>&-
    if ! grep -q "^open $count" "$dir/hold.txt"; then
        echo "idle connections to port $port: $(cat "$dir/hold.txt")" >&2
        return 1
    fi
    for _ in $(seq 100); do
        [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -eq 0 ] && break
        sleep 0.1
    done
    echo "$now"
}

# wait_http URL: until URL answers 2xx, up to 10 s; else stops the
# script, naming it.
wait_http() {
    for _ in $(seq 100); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "$(basename "$0" .sh): $1 did not answer within 10 s" >&2
    exit 1
}

# sessions_lua FILE: a wrk script sending 1 000 rotating session ids in
# X-Session (compare.sh's cluster scenario, allocations.sh's sticky one).
sessions_lua() {
    cat >"$1" <<'LUA'
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", "/", { ["X-Session"] = "s" .. (n % 1000) })
end
LUA
}
