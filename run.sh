#!/usr/bin/env bash
# marllb's entry points for a fresh machine (Python 3.11 + gcc); see usage below.
# Each sets up .venv and installs what the command needs first, idempotently:
# the install is redone only when the packaging or C sources change.
# Arguments are passed on untouched and paths in them are relative to where
# you ran it (run.sh never changes your working directory).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
VENV=${MARLLB_VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac

usage() {
    cat <<'USAGE'
usage: bash run.sh COMMAND [args...]

commands:
  demo [args]    the product on its embedded default: simulated data plane + the
                 real lbd, then a verdict against the heuristics (--help for options)
  test [args]    the test suite (what CI runs); args go to pytest
  bench [args]   the benchmarks (tests/bench/run.py; --help for options)
  help           this text

The virtualenv is .venv next to run.sh (or $MARLLB_VENV); each command installs
the extras it needs: demo [sim], test and bench [sim,train,...].
USAGE
}
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
    want=$( (cd "$ROOT" && echo "$extras" && cat pyproject.toml setup.py csrc/*.py csrc/*.[ch] \
           shm_layout/*.h $(ls vpp_plugin/core/*.[ch] 2>/dev/null)) | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
       || ! "$VENV/bin/python" -c "import marllb.daemon._core" 2>/dev/null; then
        echo "== installing marllb and its dependencies into $VENV (first time: a few minutes)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extras]" \
            2> >(grep -v "^WARNING: Location" >&2)
        echo "$want" > "$stamp"
    fi
}

# ARGS: "$@" with every argument that names an existing path made absolute
# (for the commands that must run from the repository); from the repository
# itself nothing changes (`--only sim` or `-k sim` must stay words, not paths)
abs_args() {
    ARGS=()
    local a
    if [ "$PWD" = "$ROOT" ]; then ARGS=("$@"); return; fi
    for a in "$@"; do
        if [ -e "${a%%::*}" ] && [ "${a#/}" = "$a" ]; then ARGS+=("$PWD/$a"); else ARGS+=("$a"); fi
    done
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        setup sim
        MARLLB_DEMO_PROG="bash run.sh demo" exec "$VENV/bin/python" -m marllb.sim.demo "$@"
        ;;
    test)
        setup sim,train,dist,onnx,test
        set +e
        abs_args "$@"
        cd "$ROOT"    # the suite runs from the repository; your paths were made absolute
        "$VENV/bin/python" -m pytest "${ARGS[@]}"
        rc=$?
        # pytest exits 5 when it collected no tests: that is a failure here
        [ "$rc" -eq 5 ] && echo "run.sh: pytest collected no tests" >&2
        exit "$rc"
        ;;
    bench)
        setup sim,train,onnx,test
        abs_args "$@"
        cd "$ROOT"
        exec "$VENV/bin/python" tests/bench/run.py "${ARGS[@]}"
        ;;
    help|-h|--help)
        usage
        ;;
    *)
        [ -n "$cmd" ] && echo "run.sh: unknown command '$cmd'" >&2
        usage >&2
        exit 2
        ;;
esac
