#!/usr/bin/env bash
# VIP failover outage, Shoal against keepalived, in network namespaces:
# two load-balancer hosts (lb1 priority 150, lb2 100), a backend and a
# client on one bridge. Each run breaks the master one way while the
# client probes the VIP, and reports what the client lost:
#
#   HTTP: a GET on a fresh connection every 10 ms; the outage is the
#         longest gap between two successful requests.
#   ICMP: ping every 10 ms; the outage is the longest gap between two
#         replies.
#
# Failures: `link` (lb1's eth0 goes down: a pulled cable) and `kill`
# (every process on lb1 gets SIGKILL: the load balancer software dies,
# the kernel lives on, so the address stays on lb1 and keeps answering
# ICMP until the new master's gratuitous ARP moves the client).
#
# Stacks: `shoal` (Shoal's own VRRPv3 at 100 ms), `keepalived-100ms`
# (keepalived 2.x, VRRPv3, advert_int 0.1, with Shoal serving HTTP but
# holding no VIP) and `keepalived-1s` (advert_int 1, keepalived's usual
# setting).
#
# Usage: [STACKS="shoal keepalived-100ms"] bench/failover.sh [RUNS]
#   (as root; installs keepalived,
# iputils-ping and python3 with apt-get when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/failover.sh needs root (network namespaces)" >&2
    exit 1
fi
. bench/lib.sh
need keepalived keepalived
need ping iputils-ping
need python3 python3
need ip iproute2
shoal_binary

p="sfb$$"
work=$(mktemp -d)
cleanup() {
    exec 2>/dev/null
    for ns in lb1 lb2 be cl br; do
        ip netns pids "$p-$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$p-$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
clean_up_on_exit

VIP=10.78.0.100
ip netns add "$p-br"
ip -n "$p-br" link add br0 type bridge
ip -n "$p-br" link set br0 up
n=0
for h in lb1:11 lb2:12 be:20 cl:30; do
    name=${h%%:*}; last=${h##*:}; n=$((n + 1))
    ip netns add "$p-$name"
    ip -n "$p-br" link add "v$n" type veth peer name eth0 netns "$p-$name"
    ip -n "$p-br" link set "v$n" master br0 up
    ip -n "$p-$name" addr add "10.78.0.$last/24" dev eth0
    ip -n "$p-$name" link set eth0 up
    ip -n "$p-$name" link set lo up
done
ip netns exec "$p-be" "$shoal" backend --bind 10.78.0.20:9001 --name b1 >/dev/null 2>&1 &

# node_config NAME LAST PRIORITY WITH_VIP
node_config() {
    cat <<CONF
[node]
id = "$1"
admin_addr = "10.78.0.$2:9901"
shutdown_timeout = "1s"

[[listener]]
name = "web"
bind = "0.0.0.0:80"
protocol = "http"
pool = "web"

[[pool]]
name = "web"
[[pool.backend]]
name = "b1"
address = "10.78.0.20:9001"
CONF
    if [ "$4" = yes ]; then
        printf '\n[[vip]]\naddress = "%s/24"\ninterface = "eth0"\nvrid = 51\npriority = %s\nadvert_interval = "100ms"\n' "$VIP" "$3"
    fi
}

# keepalived_config PRIORITY ADVERT_INT
keepalived_config() {
    cat <<CONF
global_defs {
  vrrp_version 3
}
vrrp_instance VI {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority $1
  advert_int $2
  virtual_ipaddress {
    $VIP/24
  }
}
CONF
}

# The probe: HTTP GETs every 10 ms for $1 seconds; prints "gap_ms failed sent".
cat >"$work/probe.py" <<'PY'
import socket, sys, time
vip, seconds = sys.argv[1], float(sys.argv[2])
oks, failed, sent = [], 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.monotonic()
    sent += 1
    ok = False
    try:
        with socket.create_connection((vip, 80), timeout=0.05) as s:
            s.settimeout(0.3)
            s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            ok = s.recv(12).endswith(b" 200")
    except OSError:
        pass
    if ok:
        oks.append(t)
    else:
        failed += 1
    time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
# The run's end counts as a point: a failover that never comes shows as
# an outage to the end, not as the last gap before it.
oks.append(end)
gap = max(b - a for a, b in zip(oks, oks[1:]))
print(f"{gap * 1000:.0f} {failed} {sent}")
PY

holds_vip() { ip -n "$p-$1" -4 addr show dev eth0 | grep -q "inet $VIP/"; }
serves() {
    ip netns exec "$p-cl" python3 -c "import socket; socket.create_connection(('$VIP', 80), timeout=0.2).close()" 2>/dev/null
}

wait_for() { # SECONDS COMMAND...: polls every 20 ms
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.02
    done
}

stop_nodes() {
    for ns in lb1 lb2; do ip netns pids "$p-$ns" | xargs -r kill -9 2>/dev/null || true; done
}

fail() {
    echo "failover bench: $1" >&2
    tail -n 20 "$work"/lb1*.log "$work"/lb2*.log >&2 || true
    stop_nodes
    exit 1
}

# run STACK FAILURE: one measurement; prints "http_gap_ms http_failed icmp_ms"
run() {
    local stack=$1 failure=$2 advert vip_in_shoal=yes probe_s=4
    case $stack in
        shoal) ;;
        keepalived-100ms) advert=0.1; vip_in_shoal=no ;;
        keepalived-1s) advert=1; vip_in_shoal=no; probe_s=8 ;;
    esac
    local pids=()
    for lb in lb1:11:150 lb2:12:100; do
        local name=${lb%%:*} rest=${lb#*:}; local last=${rest%%:*} prio=${rest##*:}
        node_config "$name" "$last" "$prio" "$vip_in_shoal" >"$work/$name.toml"
        ip netns exec "$p-$name" "$shoal" run -c "$work/$name.toml" >/dev/null 2>"$work/$name.log" &
        pids+=($!)
        if [ "$vip_in_shoal" = no ]; then
            keepalived_config "$prio" "$advert" >"$work/$name-ka.conf"
            # Stale pid files (a reused pid) make keepalived refuse to start.
            rm -f "$work/$name-k.pid" "$work/$name-v.pid"
            ip netns exec "$p-$name" keepalived --dont-fork --log-console --vrrp \
                -f "$work/$name-ka.conf" -p "$work/$name-k.pid" -r "$work/$name-v.pid" \
                >"$work/$name-ka.log" 2>&1 &
            pids+=($!)
        fi
        # lb1 first, so it is master before lb2 starts.
        if [ "$name" = lb1 ]; then
            wait_for 15 holds_vip lb1 || fail "lb1 never took the VIP ($stack)"
        fi
    done
    wait_for 15 serves || fail "the VIP is not served ($stack)"
    sleep 1 # lb2 settles as backup

    ip netns exec "$p-cl" python3 "$work/probe.py" "$VIP" "$probe_s" >"$work/http.out" &
    local probe=$!
    ip netns exec "$p-cl" ping -D -O -n -i 0.01 -W 0.2 -w "$probe_s" "$VIP" >"$work/icmp.out" 2>&1 &
    local pinger=$!
    sleep 1
    case $failure in
        link) ip -n "$p-lb1" link set eth0 down ;;
        kill) ip netns pids "$p-lb1" | xargs -r kill -9 ;;
    esac
    wait "$probe" || true
    wait "$pinger" || true
    local icmp_gap
    # Replies look like "[1764619200.123456] 64 bytes from ...", and with
    # -O every missing one prints "[...] no answer yet for icmp_seq=N": the
    # last of those marks the end of an outage that never ended, as in the
    # HTTP probe.
    icmp_gap=$(awk -F'[][]' '
        /bytes from/ { if (last) { g = $2 - last; if (g > max) max = g } last = $2 }
        /no answer yet/ { end = $2 }
        END { if (end - last > max) max = end - last; printf "%.0f", max * 1000 }' "$work/icmp.out")
    read -r gap failed _sent <"$work/http.out"

    stop_nodes
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip -n "$p-lb1" link set eth0 up
    ip -n "$p-lb1" addr del "$VIP/24" dev eth0 2>/dev/null || true
    ip -n "$p-lb2" addr del "$VIP/24" dev eth0 2>/dev/null || true
    ip -n "$p-cl" neigh flush all
    # Last: the caller reads this line and goes on at once, so the
    # clean-up above must be over by then (it kills lb1's and lb2's
    # processes, which would include the next run's).
    echo "$gap $failed $icmp_gap"
}

echo "VIP failover outage: $runs run(s) each; longest gap between successful HTTP requests and between ping replies, in ms (each probed every 10 ms)"
printf '%-18s %-6s %-28s %-20s\n' stack failure "HTTP outage ms (failed)" "ICMP outage ms"
for stack in ${STACKS:-shoal keepalived-100ms keepalived-1s}; do
    for failure in link kill; do
        http="" icmp=""
        for _ in $(seq "$runs"); do
            read -r gap failed lost < <(run "$stack" "$failure")
            http+="$gap ($failed) "
            icmp+="$lost "
        done
        printf '%-18s %-6s %-28s %-20s\n' "$stack" "$failure" "$http" "$icmp"
    done
done
