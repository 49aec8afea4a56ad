#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) on its corpus in
# fuzz/corpus/TARGET and prints executions per target. New finds go to a
# temporary directory, or into fuzz/corpus/TARGET with FUZZ_KEEP=1 (then
# minimise it with `cargo fuzz cmin -O -s none TARGET`). A crash stops
# with its input in fuzz/artifacts/TARGET/.
# Installs cargo-fuzz when missing. Uses no sanitizer (`-s none`): the
# stable toolchain has coverage instrumentation but not ASan, and the
# code under test forbids `unsafe`.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(vrrp replication config sticky_cookie h1)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --quiet --locked cargo-fuzz
fi
cargo fuzz build -O -s none >/dev/null

failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    # libFuzzer adds new inputs to the first directory it is given.
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        dirs=("corpus/$t")
    else
        finds=$(mktemp -d)
        dirs=("$finds" "corpus/$t")
    fi
    if cargo fuzz run -O -s none "$t" "${dirs[@]}" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        echo "fuzz: $t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1)"
    else
        echo "fuzz: $t FAILED:"
        grep -E -A12 "panicked|ERROR: libFuzzer|Test unit written" "$log" | head -40
        failed=1
    fi
    rm -f "$log"
    [ -n "${finds:-}" ] && rm -rf "$finds"
done
exit "$failed"
