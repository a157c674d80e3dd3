# Sourced by ./test: `buf lint` on proto/ with buf from npm (@bufbuild/buf), installed once
# into the build cache (Node.js and npm from Debian when missing).
# shellcheck shell=bash

fms_buf_lint() {
    local tools="${FMS_TOOLS_DIR:-$HOME/.cache/fms/tools}"
    local buf="$tools/node_modules/.bin/buf"
    if [ ! -x "$buf" ]; then
        command -v npm >/dev/null || fms_apt_install nodejs npm
        mkdir -p "$tools"
        (cd "$tools" && npm install --silent --no-audit --no-fund --prefix "$tools" @bufbuild/buf@1 >&2)
    fi
    (cd proto && "$buf" lint)
}
