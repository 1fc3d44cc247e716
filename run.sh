#!/usr/bin/env bash
# marllb's two entry points for a fresh machine (Python 3.11 + gcc):
#   bash run.sh demo   - run the product on its embedded default
#   bash run.sh test   - run the test suite (what CI runs)
# Each sets up .venv and installs the project first, idempotently: the
# install is redone only when the packaging or C sources change.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MARLLB_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# setup EXTRAS: the extras each command needs (demo: the simulator; test: all)
setup() {
    local extras=$1
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== creating virtualenv $VENV"
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.marllb-install-stamp-${extras//,/-}"
    local want
    want=$( (echo "$extras"; cat pyproject.toml setup.py csrc/*.py csrc/*.[ch] shm_layout/*.h \
           $(ls vpp_plugin/core/*.[ch] 2>/dev/null)) | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
       || ! "$VENV/bin/python" -c "import marllb.daemon._core" 2>/dev/null; then
        echo "== installing marllb and its dependencies into $VENV (first time: a few minutes)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" \
            2> >(grep -v "^WARNING: Location" >&2)
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        setup sim
        exec "$VENV/bin/python" -m marllb.sim.demo "$@"
        ;;
    test)
        setup sim,train,dist,onnx,test
        set +e
        "$VENV/bin/python" -m pytest "$@"
        rc=$?
        # pytest exits 5 when it collected no tests: that is a failure here
        [ "$rc" -eq 5 ] && echo "run.sh: pytest collected no tests" >&2
        exit "$rc"
        ;;
    bench)
        setup sim,train,test
        exec "$VENV/bin/python" tests/bench/run.py "$@"
        ;;
    *)
        echo "usage: bash run.sh demo|test|bench [args...]" >&2
        exit 2
        ;;
esac
