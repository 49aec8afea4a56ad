#!/usr/bin/env bash
# Sticky-table replication: three Shoal nodes on loopback (QUIC, mutual
# TLS), sessions created on node 1 with wrk (a unique X-Session header per
# request, pool sticky by header), replicated to nodes 2 and 3.
#
# 1. Throughput: wrk as fast as it can for DURATION seconds; entries/s
#    node 1 pushed and nodes 2 and 3 applied.
# 2. Lag at a steady ~10 000 new sessions/s (wrk connections pacing
#    themselves): the delay from a write on node 1 to its application on
#    nodes 2 and 3 (histogram buckets: the p50/p99 reported are bucket
#    upper bounds), and node 1's backlog to each peer (age of the oldest
#    unacknowledged batch) sampled every 20 ms.
#
# Usage: bench/replication.sh [DURATION_SECONDS]   (installs wrk with apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}

. bench/lib.sh
need wrk wrk
need curl curl
shoal_binary

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
clean_up_on_exit

"$shoal" certs --dir "$work" --nodes lb1,lb2,lb3 >/dev/null
"$shoal" backend --bind 127.0.0.1:28001 --name b1 >/dev/null 2>&1 & pids+=($!)
"$shoal" backend --bind 127.0.0.1:28002 --name b2 >/dev/null 2>&1 & pids+=($!)
for i in 1 2 3; do
    cat >"$work/lb$i.toml" <<CONF
$(cluster_node "$i" 289 "$work")

[[listener]]
name = "web"
bind = "127.0.0.1:2894$i"
protocol = "http"
pool = "web"

[[pool]]
name = "web"
sticky = { mode = "header", header = "x-session", ttl = "10m", max_entries = 10000000 }

[[pool.backend]]
name = "b1"
address = "127.0.0.1:28001"

[[pool.backend]]
name = "b2"
address = "127.0.0.1:28002"
CONF
    # Its own session, as a service runs (see compare.sh: autogroup
    # scheduling would otherwise share its CPU with wrk's).
    SHOAL_LOG=warn setsid "$shoal" run -c "$work/lb$i.toml" & pids+=($!)
done

status() { curl -fs "http://127.0.0.1:2891$1/status"; }
for _ in $(seq 100); do
    connected=$(status 1 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(p["connected"] for p in s["affinity"]["peers"]))' 2>/dev/null || echo 0)
    [ "$connected" = "2" ] && break
    sleep 0.2
done

# Unique session per request (the run name keeps runs apart: LuaJIT's
# random numbers repeat from run to run); `pace` ms between requests per
# connection.
cat >"$work/sessions.lua" <<'LUA'
local counter = 0
local id = 0
setup = function(thread) id = id + 1; thread:set("tid", id) end
init = function(args) pace = tonumber(args[1]) or 0; run = args[2] or "" end
request = function()
    counter = counter + 1
    return wrk.format("GET", "/", { ["X-Session"] = run .. tid .. "-" .. counter })
end
delay = function() return pace end
LUA

applied() { status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["affinity"]["entries_applied"])'; }
sent() { status 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["affinity"]["entries_sent"])'; }

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%F)"
s0=$(sent); a20=$(applied 2); a30=$(applied 3)
wrk -t2 -c32 -d"${duration}s" -s "$work/sessions.lua" http://127.0.0.1:28941/ -- 0 max >"$work/max.txt"
sleep 1
s1=$(sent); a21=$(applied 2); a31=$(applied 3)
python3 - "$duration" "$s0" "$s1" "$a20" "$a21" "$a30" "$a31" "$work/max.txt" <<'PY'
import sys
d = float(sys.argv[1]); s0, s1, a20, a21, a30, a31 = map(int, sys.argv[2:8])
rps = [l.split()[1] for l in open(sys.argv[8]) if l.startswith("Requests/sec")][0]
print(f"throughput: node 1 served {float(rps):.0f} new sessions/s and pushed {(s1-s0)/d:.0f} entries/s "
      f"(to 2 peers); node 2 applied {(a21-a20)/d:.0f}/s, node 3 applied {(a31-a30)/d:.0f}/s")
PY

# Steady load: 40 connections pacing 2 ms each, about 10 000 sessions/s here.
python3 - "$duration" >"$work/lag.txt" <<'PY' &
import json, sys, time, urllib.request
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        s = json.load(urllib.request.urlopen("http://127.0.0.1:28911/status", timeout=1))
        for p in s["affinity"]["peers"]:
            print(p["lag_ms"])
    except Exception:
        pass
    time.sleep(0.02)
PY
sampler=$!
# Only the steady run's delays count: restart the receivers' histograms
# by reading them before and after.
hist() { curl -fs "http://127.0.0.1:2891$1/metrics" | grep '^shoal_replication_delay_seconds_bucket'; }
hist 2 >"$work/h2a"; hist 3 >"$work/h3a"
wrk -t2 -c40 -d"${duration}s" -s "$work/sessions.lua" http://127.0.0.1:28941/ -- 2 steady >"$work/steady.txt"
wait "$sampler"
hist 2 >"$work/h2b"; hist 3 >"$work/h3b"
python3 - "$work" <<'PY'
import sys, re
w = sys.argv[1]
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'.*le="([^"]+)"\} (\d+)', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
def quantiles(before, after):
    b, a = buckets(before), buckets(after)
    cum = [(le, a[le] - b.get(le, 0)) for le in a]
    total = cum[-1][1]
    pick = lambda q: next(le for le, n in cum if n >= q * total)
    return total, pick(0.5), pick(0.99)
rps = [l.split()[1] for l in open(f"{w}/steady.txt") if l.startswith("Requests/sec")][0]
lags = sorted(int(l) for l in open(f"{w}/lag.txt") if l.strip())
print(f"steady: {float(rps):.0f} new sessions/s")
for node in (2, 3):
    n, p50, p99 = quantiles(f"{w}/h{node}a", f"{w}/h{node}b")
    print(f"  write on node 1 -> applied on node {node}: {n} entries, p50 <= {float(p50)*1000:g} ms, p99 <= {float(p99)*1000:g} ms")
print(f"  node 1 backlog to its peers over {len(lags)} samples: max {lags[-1] if lags else 0} ms")
PY
