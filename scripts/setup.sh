# Sourced by ./run and ./test: checks (and on Debian as root, installs) what the build needs,
# and points cargo at a build cache outside the clone.
# shellcheck shell=bash

# Install Debian packages when root, else print the exact command and stop.
fms_apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing $*" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
    else
        echo "setup: missing system packages; run:" >&2
        echo "  sudo apt-get install -y $*" >&2
        exit 1
    fi
}

fms_need_packages() {
    local missing=()
    # bindgen (librocksdb-sys) loads libclang at build time; RocksDB itself is C++.
    # (libclang-cpp.so is a different library and does not count.)
    if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null && ! compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null; then
        missing+=(libclang-dev)
    fi
    command -v c++ >/dev/null || missing+=(g++)
    command -v make >/dev/null || missing+=(make)
    # https for imports (reqwest's native-tls: OpenSSL, found through pkg-config).
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    # OCR: tesseract and leptonica (headers and libraries for leptess; English data).
    [ -e /usr/include/tesseract/capi.h ] || missing+=(libtesseract-dev)
    [ -e /usr/include/leptonica/allheaders.h ] || missing+=(libleptonica-dev)
    compgen -G '/usr/share/tesseract-ocr/*/tessdata/eng.traineddata' >/dev/null || missing+=(tesseract-ocr-eng)
    if [ "${#missing[@]}" -gt 0 ]; then
        fms_apt_install "${missing[@]}"
    fi
    if ! command -v cargo >/dev/null; then
        echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
        exit 1
    fi
}

# One build cache per user, outside the clone: CI's fresh clones build warm after the first.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fms/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
