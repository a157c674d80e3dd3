# Sourced by ./run and ./test: checks (and on Debian as root, installs) what the build needs,
# and points cargo at a build cache outside the clone.
# shellcheck shell=bash

fms_need_packages() {
    local missing=()
    # bindgen (librocksdb-sys) loads libclang at build time; RocksDB itself is C++.
    if ! compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null && ! compgen -G '/usr/lib/*/libclang*.so*' >/dev/null; then
        missing+=(libclang-dev)
    fi
    command -v c++ >/dev/null || missing+=(g++)
    command -v make >/dev/null || missing+=(make)
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "setup: installing ${missing[*]}" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
        else
            echo "setup: missing system packages; run:" >&2
            echo "  sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
    if ! command -v cargo >/dev/null; then
        echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
        exit 1
    fi
}

# One build cache per user, outside the clone: CI's fresh clones build warm after the first.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fms/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
