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

# Sets $shoal: a release build of this tree, or SHOAL_BIN (e.g. an older
# commit's build, for comparison).
shoal_binary() {
    if [ -z "${SHOAL_BIN:-}" ]; then
        cargo build --release --quiet -p shoal-node --bin shoal
    fi
    shoal="${SHOAL_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/shoal}"
}
