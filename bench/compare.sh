#!/usr/bin/env bash
# Shoal against HAProxy and nginx on the same machine, the same three
# backends and the same work, measured in alternation.
#
# Every proxy balances least-connections over three nginx backends (one
# nginx, `return 200`), keeps connections to them alive, adds
# X-Forwarded-For and health-checks them (HAProxy and Shoal: HTTP checks
# every 2 s; nginx open source has passive checks only: max_fails). Each
# round runs wrk (-t2, same connections and duration) against every proxy
# in turn, the starting proxy rotating per round:
#   l7        HTTP over client keep-alive
#   l4        TCP pass-through (HTTP inside) over client keep-alive
#   close     HTTP with a new client connection per request
#   cluster   Shoal alone vs Shoal in a 3-node cluster (gossip, QUIC
#             replication to two peers) with header-sticky sessions; both
#             get the same 1 000 rotating session ids
# then prints the medians (requests/s, p50, p99, the proxy's CPU time per
# request, the rest of the machine's CPU time per request and the
# machine's idle share: the proxies share a saturated machine with wrk
# and the backends, so requests/s is about cores / (proxy + rest)), the
# ratios Shoal/HAProxy and Shoal/nginx, and each proxy's memory per idle
# client connection (RSS growth with IDLE connections
# open, none of them sending, measured before the load runs).
#
# Every run but cluster also measures bench/forwarder, a yardstick that is
# not a product: the least an HTTP/1.1 proxy can do (parse, add
# X-Forwarded-For, pick the least-loaded backend, forward over a kept-alive
# connection) and, for l4, the least a TCP proxy can do (connect to the
# least-loaded backend, copy both ways). wrk, the backends and the proxy
# share the same cores, so what the forwarder reaches bounds what any
# epoll-driven proxy can reach here. forwarder-uring is the same HTTP
# yardstick on io_uring (monoio; `forwarder --uring`), for l7 and close.
#
# Usage: bench/compare.sh [--no-write]
#   ROUNDS=7 DURATION=5 CONNECTIONS=64 IDLE=10000 (environment; many short
#   rounds: on a host whose speed swings between rounds, a median of
#   seven moves less than one of three), and
#   SCENARIOS="l7 l4 close cluster" to run only some of the scenarios,
#   SHOAL_IO=epoll|io_uring: Shoal's `[node] io`, for the single node and
#   the cluster alike (default io_uring: its TCP and plain HTTP listeners
#   on io_uring where the kernel allows, else epoll; the node's status
#   says which, and the table's header repeats it)
# Writes the table into docs/benchmarks.md (between the compare markers)
# unless --no-write. Installs wrk, nginx, libnginx-mod-stream and haproxy
# with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-7}
duration=${DURATION:-5}
connections=${CONNECTIONS:-64}
idle=${IDLE:-10000}
scenarios=" ${SCENARIOS:-l7 l4 close cluster} "
for s in $scenarios; do
    case $s in
    l7 | l4 | close | cluster) ;;
    *)
        echo "compare: unknown scenario '$s' in SCENARIOS (l7, l4, close, cluster)" >&2
        exit 2
        ;;
    esac
done
wanted() { [[ $scenarios == *" $1 "* ]]; }
write=1
[ "${1:-}" = "--no-write" ] && write=0

. bench/lib.sh
need wrk wrk
need nginx nginx
need haproxy haproxy
need curl curl
need python3 python3
need ss iproute2
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
if [ ! -f "$stream_module" ] && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >/dev/null 2>&1 || true
fi
shoal_binary
cargo build --release --quiet -p shoal-bench-forwarder
forwarder="${CARGO_TARGET_DIR:-$PWD/target}/release/forwarder"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
clean_up_on_exit

# Proxies hold IDLE client connections: give them every descriptor the
# hard limit allows (raising it needs CAP_SYS_RESOURCE, which a container
# may lack).
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
# HAProxy refuses to start unless it has two descriptors per connection
# (client and server side), so it caps the idle count on such a machine.
if [ $((2 * (idle + 100) + 24)) -gt "$nofile" ]; then
    idle=$(((nofile - 24) / 2 - 100))
    echo "compare: the open-files hard limit is $nofile, so the idle-memory run holds $idle connections"
fi

# Every proxy runs in a session of its own, as a service does: with the
# kernel's autogroup scheduling (kernel.sched_autogroup_enabled, on by
# default) a process shares its CPU share with the rest of its session,
# and a proxy started in this script's session would share wrk's: that
# cost Shoal a fifth of its L7 rate (median) and made it erratic
# (docs/benchmarks.md, run G). nginx daemonizes into its own session;
# setsid keeps the pid (without job control a background job is no
# process group leader, so setsid need not fork), which own_session
# checks.
own_session() { # PID: fails unless PID leads a session of its own
    local sid=""
    for _ in $(seq 50); do
        # The session is the 4th field after the ")" ending the name.
        sid=$( (sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || true) | awk '{print $4}')
        [ "$sid" = "$1" ] && return 0
        sleep 0.1
    done
    echo "compare: process $1 is not in a session of its own (session ${sid:-none})" >&2
    exit 1
}

start_backends "$work"

# --- HAProxy: one process, a thread per core ---------------------------------
cat >"$work/haproxy.cfg" <<CONF
global
    nbthread $(nproc)
    maxconn $((idle + 100))
    ulimit-n $nofile
    log stderr format short local0 err
defaults
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 60s
    timeout http-keep-alive 60s
    log global
frontend l7
    mode http
    bind 127.0.0.1:18180
    option forwardfor
    default_backend web_http
frontend l4
    mode tcp
    bind 127.0.0.1:18181
    default_backend web_tcp
backend web_http
    mode http
    balance leastconn
    http-reuse always
    option httpchk GET /
$(haproxy_servers)
backend web_tcp
    mode tcp
    balance leastconn
    option httpchk GET /
$(haproxy_servers)
CONF
setsid haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")
own_session "$haproxy_pid"

# --- nginx as the proxy: a worker per core -----------------------------------
nginx_stream=""
if [ -f "$stream_module" ]; then
    nginx_stream="stream {
    upstream web_tcp { least_conn; server 127.0.0.1:18001 max_fails=3; server 127.0.0.1:18002 max_fails=3; server 127.0.0.1:18003 max_fails=3; }
    server { listen 127.0.0.1:18281; proxy_pass web_tcp; proxy_connect_timeout 1s; proxy_timeout 60s; }
}"
    nginx_load="load_module $stream_module;"
fi
cat >"$work/proxy.conf" <<CONF
${nginx_load:-}
worker_processes $(nproc);
worker_rlimit_nofile $nofile;
pid $work/proxy.pid;
error_log $work/proxy-error.log error;
events { worker_connections $nofile; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_header_timeout 60s;
    upstream web {
        least_conn;
        server 127.0.0.1:18001 max_fails=3 fail_timeout=10s;
        server 127.0.0.1:18002 max_fails=3 fail_timeout=10s;
        server 127.0.0.1:18003 max_fails=3 fail_timeout=10s;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:18280;
        location / {
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_connect_timeout 1s;
        }
    }
}
$nginx_stream
CONF
nginx -c "$work/proxy.conf" -p "$work"

# --- the yardstick: a thread per core ------------------------------------------
setsid "$forwarder" --tcp 127.0.0.1:18381 127.0.0.1:18380 127.0.0.1:18001 127.0.0.1:18002 127.0.0.1:18003 >"$work/forwarder.log" 2>&1 &
forwarder_pid=$!
pids+=("$forwarder_pid")
own_session "$forwarder_pid"
setsid "$forwarder" --uring 127.0.0.1:18390 127.0.0.1:18001 127.0.0.1:18002 127.0.0.1:18003 >"$work/forwarder-uring.log" 2>&1 &
forwarder_uring_pid=$!
pids+=("$forwarder_uring_pid")

# --- Shoal: one node alone, and a three-node sticky cluster ------------------
cat >"$work/shoal.toml" <<CONF
[node]
id = "bench"
admin_addr = "127.0.0.1:19901"
io = "${SHOAL_IO:-io_uring}"

$(web_listener l7 http "127.0.0.1:18080")

$(web_listener l4 tcp "127.0.0.1:18081")

$(web_pool)
CONF
SHOAL_LOG=warn setsid "$shoal" run -c "$work/shoal.toml" >"$work/shoal.log" 2>&1 &
shoal_pid=$!
pids+=("$shoal_pid")
own_session "$shoal_pid"

"$shoal" certs --dir "$work" --nodes lb1,lb2,lb3 >/dev/null
for i in 1 2 3; do
    cat >"$work/lb$i.toml" <<CONF
$(cluster_node "$i" 199 "$work" "io = \"${SHOAL_IO:-io_uring}\"")

$(web_listener l7 http "127.0.0.1:1808$((i + 1))")

$(web_pool 'sticky = { mode = "header", header = "x-session", ttl = "10m" }')
CONF
    SHOAL_LOG=warn setsid "$shoal" run -c "$work/lb$i.toml" >"$work/lb$i.log" 2>&1 &
    pids+=($!)
    own_session $!
    if [ "$i" = 1 ]; then cluster_pid=$!; fi
done

for port in 18001 18002 18003 18180 18181 18280 18380 18381 18080 18081 18082; do
    wait_http "http://127.0.0.1:$port/"
done
proxies=(shoal haproxy nginx forwarder)
# The io_uring yardstick needs io_uring (Linux 6.1 or later, not disabled
# by sysctl or seccomp); where it does not start, the run goes on without it.
if (wait_http http://127.0.0.1:18390/) 2>/dev/null; then
    own_session "$forwarder_uring_pid"
    proxies+=(forwarder-uring)
else
    echo "compare: WARNING: forwarder --uring did not start; no io_uring yardstick in this run:" >&2
    # Its error and cause, without the backtrace.
    grep -v '^ \{2,\}[0-9]*:\|^ \{6,\}at ' "$work/forwarder-uring.log" | head -5 >&2
fi
[ -n "$nginx_stream" ] && wait_http "http://127.0.0.1:18281/"
# The sticky node must see both peers over replication before it counts.
for _ in $(seq 100); do
    connected=$(curl -fs http://127.0.0.1:19911/status | python3 -c \
        'import json,sys; print(sum(p["connected"] for p in json.load(sys.stdin)["affinity"]["peers"]))' 2>/dev/null || echo 0)
    [ "$connected" = 2 ] && break
    sleep 0.2
done
[ "$connected" = 2 ] || { echo "compare: the cluster node is not replicating to both peers" >&2; exit 1; }

# The same rotating session ids for both cluster-scenario targets.
sessions_lua "$work/sessions.lua"

nginx_pids() { echo "$(cat "$work/proxy.pid") $(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')"; }
proxy_pids() { # PRODUCT: the processes that do its work
    case $1 in
        shoal) echo "$shoal_pid" ;;
        shoal-cluster) echo "$cluster_pid" ;;
        haproxy) echo "$haproxy_pid" ;;
        nginx) nginx_pids ;;
        forwarder) echo "$forwarder_pid" ;;
        forwarder-uring) echo "$forwarder_uring_pid" ;;
    esac
}
cpu_ticks() { # PID...: user + system clock ticks used so far
    local total=0 p
    for p in "$@"; do
        # Fields after the ")" that closes the command name: utime is the 12th.
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
clk_tck=$(getconf CLK_TCK)
machine_ticks() { # busy and idle clock ticks of the whole machine so far (steal is neither)
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat
}

results="$work/results.tsv"
: >"$results"
# run ROUND SCENARIO PRODUCT URL [wrk args...]
run() {
    local round=$1 scenario=$2 product=$3 url=$4 pidlist ticks busy idle_ticks busy_after idle_after
    shift 4
    local out="$work/run.txt"
    pidlist=$(proxy_pids "$product")
    # shellcheck disable=SC2086
    ticks=$(cpu_ticks $pidlist)
    read -r busy idle_ticks < <(machine_ticks)
    if ! wrk -t2 -c"$connections" -d"${duration}s" --latency "$@" "$url" >"$out" 2>&1 \
        || ! grep -q '^Requests/sec:' "$out"; then
        echo "compare: wrk against $product ($scenario) failed:" >&2
        cat "$out" >&2
        exit 1
    fi
    # shellcheck disable=SC2086
    ticks=$(($(cpu_ticks $pidlist) - ticks))
    read -r busy_after idle_after < <(machine_ticks)
    python3 - "$round" "$scenario" "$product" "$out" "$ticks" "$clk_tck" \
        "$((busy_after - busy))" "$((idle_after - idle_ticks))" >>"$results" <<'PY'
import re, sys
round_, scenario, product, path = sys.argv[1:5]
ticks, clk_tck, busy, idle = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
text = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors += int(non2xx.group(1)) if non2xx else 0
done = re.search(r"^\s*(\d+) requests in", text, re.M)
requests = int(done.group(1)) if done else 0
per_request = lambda t: t * 1e6 / clk_tck / requests if requests else float("nan")
# The rest of the machine: wrk, the backends, and kernel work no process
# was charged for, while this proxy was in the middle.
print("\t".join([round_, scenario, product,
                 f"{float(rps.group(1)) if rps else 0:.0f}",
                 f"{ms(p50.group(1)) if p50 else float('nan'):.3f}",
                 f"{ms(p99.group(1)) if p99 else float('nan'):.3f}", str(errors), f"{per_request(ticks):.1f}",
                 f"{per_request(busy - ticks):.1f}", f"{100 * idle / max(busy + idle, 1):.0f}"]))
PY
    tail -n1 "$results" | awk -F'\t' '{printf "  round %s %-8s %-16s %8s req/s  p50 %7s ms  p99 %7s ms  CPU %5s us/req (rest %5s)  idle %s%%  errors %s\n", $1, $2, $3, $4, $5, $6, $8, $9, $10, $7}'
}

# rotate: prints its arguments starting at the (round mod n)-th.
rotate() {
    local r=$1
    shift
    local a=("$@") n=$#
    for ((k = 0; k < n; k++)); do echo "${a[(k + r) % n]}"; done
}

# --- memory per idle client connection ----------------------------------------
# Measured first, on freshly started proxies, so no proxy reuses memory
# that the load runs freed.
memory() { # PRODUCT PORT
    local product=$1 port=$2 pidlist before after
    pidlist=$(proxy_pids "$product")
    # shellcheck disable=SC2086
    before=$(rss_kib $pidlist)
    # shellcheck disable=SC2086
    after=$(rss_holding "$work" "$port" "$idle" $pidlist)
    printf "%s\t%s\t%s\n" "$product" "$before" "$after" >>"$work/memory.tsv"
    printf "  memory %-8s RSS %s KiB -> %s KiB with %s idle connections\n" "$product" "$before" "$after" "$idle"
}
: >"$work/memory.tsv"
memory shoal 18080
memory haproxy 18180
memory nginx 18280

shoal_tcp_io=$(curl -fs http://127.0.0.1:19901/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["tcp_io"])')
echo "compare: $(nproc) cores, $(uname -r), Shoal's TCP and plain HTTP listeners on $shoal_tcp_io, autogroup $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo n/a), $rounds rounds of ${duration}s, wrk -t2 -c$connections"
declare -A l7=([shoal]=http://127.0.0.1:18080/ [haproxy]=http://127.0.0.1:18180/ [nginx]=http://127.0.0.1:18280/ [forwarder]=http://127.0.0.1:18380/
    [forwarder-uring]=http://127.0.0.1:18390/)
declare -A l4=([shoal]=http://127.0.0.1:18081/ [haproxy]=http://127.0.0.1:18181/ [forwarder]=http://127.0.0.1:18381/)
[ -n "$nginx_stream" ] && l4[nginx]=http://127.0.0.1:18281/
for ((r = 1; r <= rounds; r++)); do
    if wanted l7; then
        for p in $(rotate "$r" "${proxies[@]}"); do run "$r" l7 "$p" "${l7[$p]}"; done
    fi
    if wanted l4; then
        for p in $(rotate "$r" "${proxies[@]}"); do
            if [ -n "${l4[$p]:-}" ]; then run "$r" l4 "$p" "${l4[$p]}"; fi
        done
    fi
    if wanted close; then
        for p in $(rotate "$r" "${proxies[@]}"); do
            run "$r" close "$p" "${l7[$p]}" -H "Connection: close"
        done
    fi
    if wanted cluster; then
        for p in $(rotate "$r" shoal shoal-cluster); do
            if [ "$p" = shoal ]; then
                run "$r" cluster shoal "${l7[shoal]}" -s "$work/sessions.lua"
            else
                run "$r" cluster shoal-cluster http://127.0.0.1:18082/ -s "$work/sessions.lua"
            fi
        done
    fi
done

table=$(python3 - "$results" "$work/memory.tsv" "$idle" "$(nproc)" <<'PY'
import math, statistics, sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = defaultdict(list)
per_round = {}
for r, scenario, product, rps, p50, p99, errors, cpu, rest, idle in rows:
    by[(scenario, product)].append((float(rps), float(p50), float(p99), int(errors), float(cpu), float(rest), float(idle)))
    per_round[(r, scenario, product)] = (float(rps), float(p99), float(cpu))
def med(key, i):
    v = [x[i] for x in by.get(key, [])]
    return statistics.median(v) if v else None
titles = {"l7": "L7 HTTP, keep-alive", "l4": "L4 TCP, keep-alive",
          "close": "L7 HTTP, connection per request", "cluster": "Shoal cluster + sticky cost"}
print("| scenario | proxy | requests/s (median) | p50 ms | p99 ms | proxy CPU µs/request | rest of machine CPU µs/request | machine idle % | runs (requests/s) | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for scenario in ["l7", "l4", "close", "cluster"]:
    for product in ["shoal", "haproxy", "nginx", "forwarder", "forwarder-uring", "shoal-cluster"]:
        key = (scenario, product)
        if key not in by:
            continue
        runs = ", ".join(f"{x[0]:.0f}" for x in by[key])
        errs = sum(x[3] for x in by[key])
        name = {"forwarder": "forwarder (yardstick)",
                "forwarder-uring": "forwarder on io_uring (yardstick)"}.get(product, product)
        print(f"| {titles[scenario]} | {name} | {med(key, 0):.0f} | {med(key, 1):.2f} | {med(key, 2):.2f} | {med(key, 4):.1f} | {med(key, 5):.1f} | {med(key, 6):.0f} | {runs} | {errs} |")
print()
print("| ratio (medians) | value |")
print("|---|---|")
def ratio(scenario, a, b, what=0):
    x, y = med((scenario, a), what), med((scenario, b), what)
    return f"{x / y:.2f}" if x and y else "n/a"
for scenario in ["l7", "l4", "close"]:
    for other in ["haproxy", "nginx"]:
        if (scenario, other) in by:
            print(f"| {titles[scenario]}: Shoal / {other} requests/s | {ratio(scenario, 'shoal', other)} |")
    if ("l7", "haproxy") in by and scenario == "l7":
        print(f"| L7 p99: Shoal / haproxy | {ratio('l7', 'shoal', 'haproxy', 2)} |")
    if (scenario, "forwarder") in by:
        print(f"| {titles[scenario]}: yardstick forwarder / haproxy requests/s | {ratio(scenario, 'forwarder', 'haproxy')} |")
    if (scenario, "forwarder-uring") in by:
        print(f"| {titles[scenario]}: yardstick forwarder on io_uring / haproxy requests/s | {ratio(scenario, 'forwarder-uring', 'haproxy')} |")
if ("cluster", "shoal") in by:
    print(f"| cluster + sticky / single node requests/s | {ratio('cluster', 'shoal-cluster', 'shoal')} |")
# On a saturated machine a proxy that cost nothing would leave wrk and the
# backends all of it: about the most any proxy could reach here (about:
# the rest's cost per request moves a little with the proxy's batching).
cores = int(sys.argv[4])
for scenario in ["l7", "l4"]:
    rest = med((scenario, "shoal"), 5)
    if rest:
        print(f"| {titles[scenario]}: requests/s a proxy using no CPU would reach, about ({cores} cores / the rest's CPU per request in Shoal's runs) | {cores * 1e6 / rest:.0f} |")
# The host's speed drifts over tens of seconds; two proxies measured in the
# same round saw nearly the same host, so their ratio per round is less
# exposed to that drift than the ratio of medians.
def per_round_ratio(scenario, a, b, what=0):
    # A figure wrk did not print is NaN: that round is left out.
    pairs = sorted(x for x in (per_round[(r, scenario, a)][what] / per_round[(r, scenario, b)][what]
                               for (r, s, p) in per_round if s == scenario and p == b
                               and (r, scenario, a) in per_round and per_round[(r, scenario, b)][what])
                   if not math.isnan(x))
    return f"{statistics.median(pairs):.2f} ({pairs[0]:.2f}–{pairs[-1]:.2f})" if pairs else None
ratio_rows = []
for scenario in ["l7", "l4", "close"]:
    for other in ["haproxy", "nginx"]:
        ratio_rows.append((f"{titles[scenario]}: Shoal / {other}", per_round_ratio(scenario, "shoal", other)))
ratio_rows += [
    ("L7 HTTP, keep-alive: yardstick forwarder / haproxy", per_round_ratio("l7", "forwarder", "haproxy")),
    ("L4 TCP, keep-alive: yardstick forwarder / haproxy", per_round_ratio("l4", "forwarder", "haproxy")),
    ("L7 HTTP, keep-alive: yardstick forwarder on io_uring / haproxy", per_round_ratio("l7", "forwarder-uring", "haproxy")),
    ("L7 HTTP, connection per request: yardstick forwarder on io_uring / haproxy",
     per_round_ratio("close", "forwarder-uring", "haproxy")),
    ("L7 p99: Shoal / haproxy", per_round_ratio("l7", "shoal", "haproxy", 1)),
    ("L7 proxy CPU per request: Shoal / haproxy", per_round_ratio("l7", "shoal", "haproxy", 2)),
    ("cluster + sticky / single node", per_round_ratio("cluster", "shoal-cluster", "shoal")),
]
for title, value in ratio_rows:
    if value:
        print(f"| {title}, median of per-round ratios (range) | {value} |")
idle = int(sys.argv[3])
print()
print(f"| proxy | RSS before | RSS with {idle} idle connections | bytes per idle connection |")
print("|---|---|---|---|")
for line in open(sys.argv[2]):
    product, before, after = line.split()
    per = (int(after) - int(before)) * 1024 / idle
    print(f"| {product} | {int(before) / 1024:.1f} MiB | {int(after) / 1024:.1f} MiB | {per:.0f} |")
PY
)
header="### $(date -u +%F) — $(nproc) vCPU $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo | awk '{print $1, $2}'), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r | cut -d- -f1), $(haproxy -v | awk 'NR==1 {print "HAProxy", $3}'), $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /'), $rounds rounds × ${duration} s, wrk -t2 -c$connections, Shoal's TCP and plain HTTP listeners on $shoal_tcp_io"
echo
echo "$header"
echo
echo "$table"
if [ "$write" = 1 ]; then
    python3 - docs/benchmarks.md "$header" "$table" <<'PY'
import sys
path, header, table = sys.argv[1:4]
text = open(path).read()
begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
block = f"{begin}\n{header}\n\n{table}\n{end}"
if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
    echo "compare: table written to docs/benchmarks.md"
fi
