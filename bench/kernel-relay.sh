#!/usr/bin/env bash
# Does relaying L4 bytes in the kernel beat a user-space copy loop here?
#
# TCP proxies over compare.sh's three nginx backends, measured in
# alternation with wrk (HTTP over client keep-alive, as compare.sh's l4 run):
#   shoal      Shoal's L4 listener on epoll (SHOAL_IO, `[node] io`, default
#              epoll here: the node's own default is io_uring, which does
#              not splice): copies short messages, splices bulk
#              (node/src/dataplane/copy.rs)
#   haproxy    HAProxy `mode tcp`, leastconn, health checks on
#   forwarder  bench/forwarder --tcp: a user-space copy loop, nothing else
#   splice     bench/kernel-relay splice: socket -> pipe -> socket with
#              splice(2); no byte is copied to user space
#   sockmap    bench/kernel-relay sockmap: both sockets of a pair in a
#              SOCKHASH with an sk_skb stream verdict (splice.bpf.c) that
#              sends what one receives out of the other; the proxy is not
#              woken for the bytes at all
#   uring      bench/kernel-relay uring: the forwarder's copy loop with its
#              system calls batched through io_uring, one io_uring_enter per
#              round of completions, deferred task work
#              (bench/kernel-relay/src/uring.rs)
#   uring-plain  the same without IORING_SETUP_DEFER_TASKRUN
#   uring-fixed, uring-pollfirst, uring-both  `uring` with the pair's
#              sockets registered with the ring (fixed files), with receives
#              flagged IORING_RECVSEND_POLL_FIRST, and with both
#   tokio-uring  the same copy loop on tokio-uring's safe API
#   monoio     the same copy loop on monoio (an io_uring thread-per-core
#              runtime with a safe API); monoio-defer with deferred task work
#   compio     the same on compio (the same kind of runtime, which falls
#              back to epoll by itself where io_uring is refused);
#              compio-defer with deferred task work, compio-poll on epoll
# and prints, as medians over the rounds: requests/s, the ratio to HAProxy,
# and per request the machine's busy CPU time (every core, kernel threads
# included: where the kernel does the relaying, that is where its cost
# shows), the part of it spent in the kernel's workqueue threads, and the
# machine's context switches.
#
# Usage: bench/kernel-relay.sh   ROUNDS=5 DURATION=3 CONNECTIONS=64 SHOAL_IO=epoll (environment);
#   SIZE=BYTES has the backends answer a body of that size (a static file)
#   instead of compare.sh's short one, for bulk transfers.
#   PROXIES="haproxy uring ..." measures only those (haproxy always).
#   URING_SUBMIT_EVERY=K has the `uring` loops enter the kernel to submit
#   after every K completions handled, not only once per round (0).
# SHOAL_BIN measures another build of Shoal (as compare.sh).
# Needs root (loading BPF needs CAP_BPF and CAP_NET_ADMIN). Installs clang,
# libbpf-dev, wrk, nginx and haproxy with apt-get when missing. Builds into
# target/ and bench/kernel-relay/target; writes nothing else outside its
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

rounds=${ROUNDS:-5}
duration=${DURATION:-3}
connections=${CONNECTIONS:-64}
size=${SIZE:-}

if [ "$(id -u)" -ne 0 ]; then
    echo "kernel-relay: needs root to load the BPF program; nothing measured" >&2
    exit 1
fi
need clang clang
need gcc gcc
need curl curl
need wrk wrk
need nginx nginx
need haproxy haproxy
need python3 python3
if [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
    echo "installing libbpf-dev with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libbpf-dev >/dev/null
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/backends.pid" ] && kill "$(cat "$work/backends.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
clean_up_on_exit

clang -O2 -g -target bpf -I"/usr/include/$(gcc -dumpmachine)" \
    -c bench/kernel-relay/splice.bpf.c -o "$work/splice.bpf.o"
cargo build --release --quiet --manifest-path bench/kernel-relay/Cargo.toml
relay="${CARGO_TARGET_DIR:-bench/kernel-relay/target}/release/kernel-relay"
shoal_binary
cargo build --release --quiet -p shoal-bench-forwarder
forwarder="${CARGO_TARGET_DIR:-$PWD/target}/release/forwarder"

start_backends "$work"
path=/
if [ -n "$size" ]; then
    # The same backends, serving a file of SIZE bytes at /body.
    mkdir -p "$work/www"
    head -c "$size" /dev/urandom >"$work/www/body"
    # nginx's workers (www-data) must reach it through mktemp's 0700 dir.
    chmod 755 "$work" "$work/www"
    chmod 644 "$work/www/body"
    sed -i "s|location / {|location = /body { root $work/www; } location / {|" "$work/backends.conf"
    # nginx writes its pid file after start_backends returns.
    for _ in $(seq 50); do [ -s "$work/backends.pid" ] && break; sleep 0.1; done
    nginx -c "$work/backends.conf" -p "$work" -s reload
    path=/body
fi
cat >"$work/haproxy.cfg" <<CONF
global
    nbthread $(nproc)
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend l4
    bind 127.0.0.1:18581
    default_backend web_tcp
backend web_tcp
    balance leastconn
    option httpchk GET /
$(haproxy_servers)
CONF
backends=(127.0.0.1:18001 127.0.0.1:18002 127.0.0.1:18003)
# Each proxy in a session of its own, as compare.sh explains (autogroups).
setsid haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)
setsid "$forwarder" --tcp 127.0.0.1:18582 127.0.0.1:18583 "${backends[@]}" >"$work/forwarder.log" 2>&1 &
pids+=($!)
cat >"$work/shoal.toml" <<CONF
[node]
id = "relay"
admin_addr = "127.0.0.1:19951"
io = "${SHOAL_IO:-epoll}"

$(web_listener l4 tcp 127.0.0.1:18586)

$(web_pool)
CONF
SHOAL_LOG=warn setsid "$shoal" run -c "$work/shoal.toml" >"$work/shoal.log" 2>&1 &
pids+=($!)
setsid "$relay" splice 127.0.0.1:18584 "${backends[@]}" >"$work/splice.log" 2>&1 &
pids+=($!)
setsid "$relay" sockmap "$work/splice.bpf.o" 127.0.0.1:18585 "${backends[@]}" >"$work/sockmap.log" 2>&1 &
pids+=($!)
# The io_uring copy loops, one port each from 18587 on.
io_uring_loops=(uring tokio-uring uring-plain uring-fixed uring-pollfirst uring-both monoio monoio-defer compio compio-defer compio-poll)
declare -A url=()
for ((k = 0; k < ${#io_uring_loops[@]}; k++)); do
    mode=${io_uring_loops[k]}
    setsid "$relay" "$mode" "127.0.0.1:$((18587 + k))" "${backends[@]}" >"$work/$mode.log" 2>&1 &
    pids+=($!)
    url[$mode]=http://127.0.0.1:$((18587 + k))$path
done
read -ra products <<<"${PROXIES:-shoal haproxy forwarder splice sockmap uring uring-plain uring-fixed uring-pollfirst uring-both tokio-uring monoio monoio-defer compio compio-defer compio-poll}"
if [[ " ${products[*]} " != *" haproxy "* ]]; then
    echo "kernel-relay: PROXIES must include haproxy, the ratios' base" >&2
    exit 1
fi
url+=([shoal]=http://127.0.0.1:18586$path [haproxy]=http://127.0.0.1:18581$path
    [forwarder]=http://127.0.0.1:18582$path [splice]=http://127.0.0.1:18584$path
    [sockmap]=http://127.0.0.1:18585$path)
for product in "${products[@]}"; do
    if [ -z "${url[$product]:-}" ]; then
        echo "kernel-relay: unknown proxy $product in PROXIES" >&2
        exit 1
    fi
    for _ in $(seq 50); do
        curl -sf -m 1 "${url[$product]}" >/dev/null 2>&1 && continue 2
        sleep 0.1
    done
    echo "kernel-relay: $product does not answer on ${url[$product]}:" >&2
    cat "$work"/*.log >&2
    exit 1
done

# counters: "BUSY_TICKS CONTEXT_SWITCHES KWORKER_TICKS" of the whole machine;
# the kernel's workqueue threads (kworker) are where sockmap sends
# redirected bytes from. (A kworker that exits during a round takes its
# ticks along, so that column can only undercount.)
counters() {
    local kworker=0 d comm
    for d in /proc/[0-9]*; do
        read -r comm <"$d/comm" 2>/dev/null || continue
        [[ $comm == kworker* ]] || continue
        kworker=$((kworker + $(awk '{print $14 + $15}' "$d/stat" 2>/dev/null || echo 0)))
    done
    awk -v k="$kworker" '/^cpu /{busy=$2+$3+$4+$7+$8} /^ctxt/{ctxt=$2} END{print busy, ctxt, k}' /proc/stat
}
results="$work/results.txt"
for ((r = 0; r < rounds; r++)); do
    # The starting proxy rotates per round.
    for ((k = 0; k < ${#products[@]}; k++)); do
        product=${products[(k + r) % ${#products[@]}]}
        read -r busy0 ctxt0 kworker0 < <(counters)
        out=$(wrk -t2 -c"$connections" -d"${duration}s" "${url[$product]}" 2>&1 || true)
        read -r busy1 ctxt1 kworker1 < <(counters)
        requests=$(awk '/requests in/{print $1}' <<<"$out")
        rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
        if [ -z "$requests" ] || grep -q "Non-2xx\|Socket errors" <<<"$out"; then
            echo "kernel-relay: wrk against $product failed or saw errors:" >&2
            echo "$out" >&2
            exit 1
        fi
        echo "$r $product $rps $requests $((busy1 - busy0)) $((ctxt1 - ctxt0)) $((kworker1 - kworker0))" >>"$results"
        echo "round $((r + 1)) $product: $rps requests/s"
    done
done

python3 - "$results" "$(getconf CLK_TCK)" "${products[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
clk_tck = int(sys.argv[2])
products = sys.argv[3:]
by = {}
for r, product, rps, requests, busy, ctxt, kworker in rows:
    d = by.setdefault(product, {"rps": {}, "cpu": [], "ctxt": [], "kworker": []})
    d["rps"][r] = float(rps)
    d["cpu"].append(int(busy) / clk_tck * 1e6 / int(requests))
    d["ctxt"].append(int(ctxt) / int(requests))
    d["kworker"].append(max(0, int(kworker)) / clk_tck * 1e6 / int(requests))
haproxy = by["haproxy"]["rps"]
base = statistics.median(haproxy.values())
print()
print(f"medians over {len(haproxy)} rounds")
print("| proxy | requests/s | / haproxy | / haproxy per round (range) | machine CPU µs / request | of it in kworker threads | context switches / request |")
print("|---|---|---|---|---|---|---|")
for product in products:
    d = by[product]
    rps = statistics.median(d["rps"].values())
    ratios = [d["rps"][r] / haproxy[r] for r in haproxy]
    per_round = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
    print(f"| {product} | {rps:,.0f} | {rps / base:.2f} | {per_round} | {statistics.median(d['cpu']):.1f} | {statistics.median(d['kworker']):.1f} | {statistics.median(d['ctxt']):.2f} |")
PY
