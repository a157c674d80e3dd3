# The real client libraries the tests drive (sourced by ./test): tus-js-client (npm) under
# Node.js and tuspy (PyPI) under Python, installed once into ~/.cache/fms/clients.

fms_install_test_clients() {
    local dir="${FMS_CLIENTS_DIR:-$HOME/.cache/fms/clients}"
    command -v node >/dev/null || fms_apt_install nodejs npm
    command -v npm >/dev/null || fms_apt_install npm
    command -v python3 >/dev/null || fms_apt_install python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || fms_apt_install python3-venv
    mkdir -p "$dir"
    if [ ! -f "$dir/node_modules/tus-js-client/package.json" ]; then
        (cd "$dir" && npm install --silent --no-audit --no-fund tus-js-client@4.3.1 >/dev/null)
    fi
    if ! "$dir/venv/bin/python" -c 'import tusclient' 2>/dev/null; then
        python3 -m venv "$dir/venv"
        "$dir/venv/bin/pip" install --quiet --disable-pip-version-check tuspy==1.1.0
    fi
    # A font to render text for the OCR tests.
    [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || fms_apt_install fonts-dejavu-core
    export FMS_TEST_FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
    export FMS_TEST_NODE_PATH="$dir/node_modules"
    export FMS_TEST_PYTHON="$dir/venv/bin/python"
}
