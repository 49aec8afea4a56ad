#!/usr/bin/env bash
# Builds the `shoal:local` image: a statically linked release `shoal`
# (glibc, +crt-static) in a FROM-scratch image. Needs Rust and a Docker
# engine; pulls nothing.
#
# Usage: docker/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
# --target keeps the static flag off build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
    --target "$target" -p shoal-node --bin shoal
bin="${CARGO_TARGET_DIR:-$PWD/target}/$target/release/shoal"
# A dynamic binary lists its libraries as "lib => path".
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "docker/build.sh: $bin is not statically linked" >&2
    exit 1
fi
# Without debug info the image is a fraction of the size.
strip --strip-debug -o docker/shoal "$bin"
# The legacy builder's deprecation notice is noise; other output shows on
# failure.
if ! out=$(docker build --quiet -t shoal:local docker 2>&1); then
    echo "$out" >&2
    exit 1
fi
echo "built image shoal:local ($(du -h docker/shoal | cut -f1) binary)"
