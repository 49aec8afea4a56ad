#!/usr/bin/env bash
# Chaos suite: the docker-compose cluster (docker-compose.yml: lb1-lb3
# sharing a VIP, backend1-3, a client) broken on purpose while the client
# sends a bounded load through the VIP (`shoal probe`: requests on fresh
# connections at a fixed rate for a fixed time, with sticky sessions).
# Each scenario starts from a fresh `up` and always ends with `down -v`.
# See docs/chaos.md for what each scenario proves.
#
# Usage: cluster-tests/chaos.sh [SCENARIO...]   (all by default)
# A failed scenario leaves every container's log and the probe's summary
# in $CHAOS_LOGS (default target/chaos-logs/SCENARIO/); CHAOS_KEEP_LOGS=1
# keeps them for passing scenarios too.
# Scenarios: kill_master pause_master partition backend_failure
#            rolling_restart bad_config
# Needs a Docker engine with compose, Rust (the image is built here from
# a static `shoal`; nothing is pulled), curl and python3.
# The last line is always "chaos: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

ALL=(kill_master pause_master partition backend_failure rolling_restart bad_config)
PROJECT=shoalchaos
VIP=172.31.77.100
passed=0
failed=0
results=()

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    COMPOSE=(docker-compose)
fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml "$@"; }

say() { echo "chaos: $*"; }

finish() {
    for r in "${results[@]}"; do echo "  $r"; done
    echo "chaos: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

if ! docker info >/dev/null 2>&1 || ! "${COMPOSE[@]}" version >/dev/null 2>&1; then
    echo "!!!!! chaos: no Docker engine with compose here: the chaos suite did NOT run !!!!!"
    failed=1
    results+=("FAIL  (no Docker engine)")
    finish
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "chaos: needs $tool"; failed=1; finish; }
done

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=("${ALL[@]}")
for s in "${scenarios[@]}"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || { echo "chaos: unknown scenario $s (known: ${ALL[*]})"; failed=1; finish; }
done

say "building the image (static shoal, FROM scratch)"
if ! docker/build.sh; then
    failed=1
    results+=("FAIL  image build")
    finish
fi

work=$(mktemp -d)
trap 'compose down -v --remove-orphans >/dev/null 2>&1; rm -rf "$work"' EXIT

# --- helpers -------------------------------------------------------------

# status N: lbN's /status (empty when it does not answer).
status() { curl -s -m 1 "http://127.0.0.1:990$1/status" || true; }

# field N PYTHON_EXPR: evaluates EXPR on lbN's status as `s` ("" on error).
field() {
    status "$1" | python3 -c "import json,sys
try:
    s = json.load(sys.stdin); print($2)
except Exception:
    print('')" 2>/dev/null
}

vip_state() { field "$1" "s['vips'][0]['state']"; }

# masters: the nodes whose status says they are the VIP's master.
masters() {
    local m=() n
    for n in 1 2 3; do [ "$(vip_state "$n")" = master ] && m+=("lb$n"); done
    echo "${m[*]}"
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls every 50 ms.
wait_until() {
    local deadline=$(($(date +%s%N) + $1 * 1000000000)) what=$2
    shift 2
    until "$@"; do
        if [ "$(date +%s%N)" -gt "$deadline" ]; then
            echo "    timed out waiting for $what"
            return 1
        fi
        sleep 0.05
    done
}

one_master() { [ "$(masters | wc -w)" -eq 1 ]; }
# Backends start before their first health check passes on every node.
all_backends_up() {
    local n
    for n in 1 2 3; do
        [ "$(field "$n" "all(b['healthy'] for p in s['pools'] for b in p['backends'])")" = True ] || return 1
    done
}
all_answer() { [ -n "$(status 1)" ] && [ -n "$(status 2)" ] && [ -n "$(status 3)" ]; }
peers_alive() { [ "$(field "$1" "sum(p['state'] == 'alive' for p in s['peers'])")" = "$2" ]; }

up() {
    compose up -d --force-recreate --remove-orphans >"$work/up.log" 2>&1 || { cat "$work/up.log"; return 1; }
    wait_until 30 "all three nodes' admin APIs" all_answer &&
        wait_until 15 "one VIP master" one_master &&
        wait_until 15 "a full cluster view on lb1" peers_alive 1 2 &&
        wait_until 15 "every backend healthy on every node" all_backends_up &&
        echo "    nodes' data plane (node.tcp_io): lb1 $(field 1 "s['node']['tcp_io']"), lb2 $(field 2 "s['node']['tcp_io']"), lb3 $(field 3 "s['node']['tcp_io']")"
}

# probe FILE RATE SECONDS SESSIONS: a bounded load in the background.
probe() {
    compose exec -T client /usr/local/bin/shoal probe --target "$VIP:80" \
        --rate "$2" --duration "${3}s" --sessions "$4" >"$1" 2>"$1.err" &
    probe_pid=$!
    probe_deadline=$(($(date +%s) + $3 + 40))
}

# Waits for the probe, killing it if it outlives its run by 40 s.
wait_probe() {
    while kill -0 "$probe_pid" 2>/dev/null; do
        if [ "$(date +%s)" -gt "$probe_deadline" ]; then
            echo "    the probe hung: killed"
            kill "$probe_pid" 2>/dev/null
            break
        fi
        sleep 0.2
    done
    wait "$probe_pid" 2>/dev/null
}

# summary FILE KEY: one figure of a probe's JSON summary.
summary() { python3 -c "import json; print(json.load(open('$1'))['$2'])" 2>/dev/null; }

# The container of service $1, running or not (Compose v2 lists only
# running ones without -a).
cid() { compose ps -a -q "$1"; }

check() { # check CONDITION_COMMAND... MESSAGE: records a failed expectation
    local msg=${*: -1}
    if "${@:1:$#-1}"; then
        echo "    ok: $msg"
    else
        echo "    FAILED: $msg"
        scenario_ok=0
        return 1
    fi
}

quiet() { "$@" >/dev/null 2>&1; }

# Numbers only: an empty figure (a status that did not answer) fails.
le() { [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]] && [ "$1" -le "$2" ]; }
eq() { [ "$1" = "$2" ]; }

# report FILE: the client's figures.
report() {
    if [ -z "$(summary "$1" sent)" ]; then
        echo "    client: the probe failed: $(tail -n 3 "$1.err" "$1" 2>/dev/null)"
        return
    fi
    echo "    client: sent $(summary "$1" sent), failed $(summary "$1" failed) ($(summary "$1" error_percent)%), longest outage $(summary "$1" longest_outage_ms) ms, sessions kept $(summary "$1" sessions_kept)/$(summary "$1" sessions)"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- scenarios -----------------------------------------------------------

# 1. kill -9 the VIP master: another node reports master within 2 s, the
#    client's outage is bounded and every sticky session keeps its backend.
scenario_kill_master() {
    probe "$work/p.json" 50 10 20
    sleep 3
    local m t0 took c
    m=$(masters)
    check eq "$(wc -w <<<"$m")" 1 "one master before the kill ($m)" || { wait_probe; return; }
    # `docker kill` on the container compose made: the compose CLI's own
    # start-up time would count against the 2 s otherwise.
    c=$(cid "$m")
    t0=$(now_ms)
    check quiet docker kill -s KILL "$c" "$m killed" || { wait_probe; return; }
    wait_until 5 "a new master" new_master_besides "$m"
    took=$(($(now_ms) - t0))
    wait_probe
    report "$work/p.json"
    echo "    $m killed; $(masters) reported master after $took ms"
    check le "$took" 2000 "a new master within 2 s ($took ms)"
    check le "$(summary "$work/p.json" longest_outage_ms)" 1000 "client outage at most 1 s"
    check eq "$(summary "$work/p.json" sessions_kept)" 20 "all 20 sticky sessions kept their backend"
}
# new_master_besides lbN: another node reports itself master. lbN itself
# is not asked: a killed or frozen node's status only times out (1 s),
# which would count against the takeover.
new_master_besides() {
    local n
    for n in 1 2 3; do
        [ "lb$n" != "$1" ] && [ "$(vip_state "$n")" = master ] && return 0
    done
    return 1
}

# 2. pause the master (SIGSTOP of the whole container), then unpause:
#    a backup takes over, and once the old master resumes there is exactly
#    one master again (no lasting split brain), still serving.
scenario_pause_master() {
    probe "$work/p.json" 50 12 20
    sleep 2
    local m
    m=$(masters)
    check eq "$(wc -w <<<"$m")" 1 "one master before the pause ($m)" || { wait_probe; return; }
    check quiet compose pause "$m" "$m paused"
    check wait_until 5 "a backup to take over" new_master_besides "$m" "a backup took over"
    echo "    master while $m is paused: $(masters)"
    sleep 2
    check quiet compose unpause "$m" "$m resumed"
    # Allow the resumed master a moment to reclaim (it has the higher
    # priority), then require one master, steadily, for 2 s.
    sleep 1
    local stable=1 until_ms=$(($(now_ms) + 2000))
    while [ "$(now_ms)" -lt "$until_ms" ]; do
        one_master || stable=0
    done
    wait_probe
    report "$work/p.json"
    echo "    after resuming: master $(masters)"
    check eq "$stable" 1 "exactly one master for 2 s after the resume"
    check eq "$(masters)" "$m" "the resumed higher-priority node is master again"
    check le "$(summary "$work/p.json" longest_outage_ms)" 1500 "client outage at most 1.5 s"
    check eq "$(summary "$work/p.json" sessions_kept)" 20 "all 20 sticky sessions kept their backend"
}

# 3. partition lb3 (a backup) from the others: they see it dead, it serves
#    nothing meanwhile; sessions made during the partition reach it once
#    it reconnects (resync), and the cluster has one master again.
scenario_partition() {
    local net c
    net="${PROJECT}_shoal"
    c=$(cid lb3)
    check quiet docker network disconnect "$net" "$c" "lb3 disconnected" || return
    check wait_until 10 "lb1 to see lb3 dead" peers_alive 1 1 "lb1's status shows lb3 dead"
    echo "    lb1 sees $(field 1 "[p['id'] + ':' + p['state'] for p in s['peers']]")"
    # lb3's own view, from inside its container (its admin port is
    # unreachable from here now): both peers dead.
    wait_until 10 "lb3 to see both peers dead" lb3_alone "$c"
    check lb3_alone "$c" "lb3's status shows it cut off from both peers"
    # Sessions made now are replicated to lb2 only.
    probe "$work/p.json" 50 3 30
    wait_probe
    local before3 entries1
    before3=$(docker exec "$c" /usr/local/bin/shoal status --json --admin 127.0.0.1:9901 2>/dev/null |
        python3 -c "import json,sys; print(json.load(sys.stdin)['affinity']['entries'])" 2>/dev/null)
    entries1=$(field 1 "s['affinity']['entries']")
    check quiet docker network connect --ip 172.31.77.13 "$net" "$c" "lb3 reconnected"
    wait_until 15 "lb3 to rejoin" peers_alive 3 2
    wait_until 10 "lb3's sticky table to catch up" table_caught_up 3 "$entries1"
    wait_until 5 "one master" one_master
    report "$work/p.json"
    echo "    sticky entries: lb1 $entries1, lb3 ${before3:-?} while cut off, $(field 3 "s['affinity']['entries']") after"
    check le 30 "$entries1" "the sessions made during the partition are in lb1's table"
    check le "${before3:-99999}" 0 "lb3 did not have them while cut off"
    check table_caught_up 3 "$entries1" "lb3 resynced the table after rejoining"
    check one_master "one master after the partition healed"
    check eq "$(summary "$work/p.json" failed)" 0 "no client errors (lb3 was a backup)"
}
table_caught_up() { le "$2" "$(field "$1" "s['affinity']['entries']")"; }
lb3_alone() {
    docker exec "$1" /usr/local/bin/shoal status --json --admin 127.0.0.1:9901 2>/dev/null |
        python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s['peers']) == 2 and all(p['state'] != 'alive' for p in s['peers']) else 1)" 2>/dev/null
}

# 4. a backend fails and recovers under load: retries and health checks
#    keep every request served.
scenario_backend_failure() {
    probe "$work/p.json" 50 12 0
    sleep 2
    check quiet compose kill backend2 "backend2 killed"
    check wait_until 10 "lb1 to mark backend2 down" backend_state 1 backend2 down "lb1 marked backend2 down"
    sleep 2
    check quiet compose start backend2 "backend2 started again"
    check wait_until 10 "every node to mark backend2 up" backend_up_everywhere "every node sees backend2 back"
    wait_probe
    report "$work/p.json"
    check eq "$(summary "$work/p.json" failed)" 0 "no client errors: connect retries cover the dead backend"
}
backend_up_everywhere() { backend_state 1 backend2 up && backend_state 2 backend2 up && backend_state 3 backend2 up; }
backend_state() { # N BACKEND up|down
    local healthy
    healthy=$(field "$1" "[b for p in s['pools'] for b in p['backends'] if b['name'] == '$2'][0]['healthy']")
    case $3 in up) [ "$healthy" = True ] ;; down) [ "$healthy" = False ] ;; esac
}

# 5. rolling restart of every node, one by one (SIGTERM, then start): no
#    sticky session lost, errors under 2% of requests.
scenario_rolling_restart() {
    probe "$work/p.json" 50 40 20
    sleep 3
    local n moves_before="" moves_after
    for n in 3 2 1; do
        [ "$n" = 1 ] && moves_before=$(field 2 "s['vips'][0]['transitions']")
        check quiet compose restart -t 10 "lb$n" "lb$n restarted"
        check wait_until 20 "lb$n back in the cluster" peers_alive "$n" 2 "lb$n back in the cluster"
        check wait_until 10 "lb$n's table synced" table_caught_up "$n" 20 "lb$n has the 20 sessions again"
        wait_until 5 "one master" one_master
        check one_master "one master ($(masters))"
        sleep 1
    done
    wait_probe
    report "$work/p.json"
    # Restarting the master moved the VIP to lb2 (priority 0 on SIGTERM)
    # and back (lb1 preempts): at least two state changes on lb2.
    moves_after=$(field 2 "s['vips'][0]['transitions']")
    echo "    lb2's VIP state changes while lb1 restarted: ${moves_before:-?} -> ${moves_after:-?}"
    check le "$((${moves_before:-999999} + 2))" "${moves_after:-}" "the VIP moved off the restarting master and back"
    local pct
    pct=$(summary "$work/p.json" error_percent)
    check python3 -c "import sys; sys.exit(0 if $pct < 2 else 1)" "error rate under 2% ($pct%)"
    check eq "$(summary "$work/p.json" sessions_kept)" 20 "all 20 sticky sessions kept their backend"
}

# 6. lb3 restarted with a corrupted, then an invalid, config: it refuses
#    to start, saying where the problem is; the others keep serving.
scenario_bad_config() {
    probe "$work/p.json" 50 12 10
    sleep 1
    local kind code logs
    for kind in corrupted invalid; do
        case $kind in
            corrupted) printf '[node\nid = "lb3\n\0\0garbage' >"$work/lb3.toml" ;;
            invalid) sed 's/^priority = 50$/priority = 300/' docker/config/lb3.toml >"$work/lb3.toml" ;;
        esac
        cat >"$work/override.yml" <<YML
version: "2.4"
services:
  lb3:
    volumes: ["$work/lb3.toml:/etc/shoal/shoal.toml:ro"]
YML
        # Recreated, so its logs hold this run only.
        "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f "$work/override.yml" \
            up -d --force-recreate --no-deps lb3 >/dev/null 2>&1
        check wait_until 10 "lb3 to exit" container_exited lb3 "lb3 exited"
        code=$(docker inspect -f '{{.State.ExitCode}}' "$(cid lb3)")
        logs=$(compose logs --no-color lb3 2>&1 | tail -n 5)
        echo "    $kind config: lb3 exited $code: $(echo "$logs" | grep -m1 -o 'error.*' | cut -c1-120)"
        check eq "$code" 2 "lb3 refuses the $kind config with exit status 2"
        check grep -q "shoal.toml:" <<<"$logs" "the error names the file and line"
    done
    check wait_until 10 "lb1 to see lb3 gone" peers_alive 1 1 "lb1 sees lb3 gone"
    wait_probe
    report "$work/p.json"
    check one_master "one master at the end"
    check eq "$(summary "$work/p.json" failed)" 0 "no client errors"
    check eq "$(summary "$work/p.json" sessions_kept)" 10 "all 10 sticky sessions kept their backend"
}
container_exited() { [ "$(docker inspect -f '{{.State.Running}}' "$(cid "$1")" 2>/dev/null)" = false ]; }

# keep_logs SCENARIO: every service's log (with timestamps) and the
# probe's output, for reading after the containers are gone.
keep_logs() {
    local dir=${CHAOS_LOGS:-target/chaos-logs}/$1 svc
    rm -rf "$dir" && mkdir -p "$dir" || return
    for svc in lb1 lb2 lb3 backend1 backend2 backend3; do
        compose logs --no-color --timestamps "$svc" >"$dir/$svc.log" 2>&1
    done
    cp "$work"/p.json* "$dir/" 2>/dev/null
    echo "    logs kept in $dir"
}

# --- run -----------------------------------------------------------------

for s in "${scenarios[@]}"; do
    echo
    say "scenario $s"
    t0=$(date +%s)
    scenario_ok=1
    if up; then
        "scenario_$s"
    else
        echo "    FAILED: the cluster did not come up"
        compose logs --no-color --tail=20 >&2
        scenario_ok=0
    fi
    if [ "$scenario_ok" -eq 0 ] || [ "${CHAOS_KEEP_LOGS:-0}" = 1 ]; then
        keep_logs "$s"
    fi
    compose down -v --remove-orphans >/dev/null 2>&1
    if [ "$scenario_ok" -eq 1 ]; then
        passed=$((passed + 1))
        results+=("PASS  $s ($(($(date +%s) - t0))s)")
    else
        failed=$((failed + 1))
        results+=("FAIL  $s ($(($(date +%s) - t0))s)")
    fi
done
echo
finish
