#!/usr/bin/env bash
# Real-VPP check of the lb_rl plugin (not CI): build the plugin against a VPP
# build tree or an installed vpp-dev, start VPP on packet-generator
# interfaces, attach a real lbd, replay TCP flows and check affinity, FIN
# handling, counters and weight application (check_real_vpp.py).
#
#   VPP_DIR=/usr vpp_plugin/check_real_vpp.sh                  # vpp + vpp-dev packages
#   VPP_DIR=~/vpp/build-root/install-vpp-native/vpp vpp_plugin/check_real_vpp.sh
#
# Environment: VPP_DIR (required: holds bin/vpp, bin/vppctl and
# lib*/**/vpp_plugins), WORK (scratch, default /tmp/lb_rl-vppcheck),
# WORKERS (VPP workers, default 1), ENCAP (l2dsr|l3dsr|gre4), PYTHON (the
# project's venv python, default .venv/bin/python), plus cmake, a C compiler
# and vppapigen's python3-ply.  Run as a user allowed to start VPP (root, or
# one with access to /dev/shm and the socket paths under WORK).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
: "${VPP_DIR:?set VPP_DIR to a VPP install prefix or build install tree}"
WORK=${WORK:-/tmp/lb_rl-vppcheck}
WORKERS=${WORKERS:-1}
ENCAP=${ENCAP:-l2dsr}
PYTHON=${PYTHON:-$root/.venv/bin/python}

vpp=$VPP_DIR/bin/vpp
vppctl=$VPP_DIR/bin/vppctl
[ -x "$vpp" ] && [ -x "$vppctl" ] || { echo "no $vpp / $vppctl" >&2; exit 2; }
vpp_plugins=$(find "$VPP_DIR"/lib* -maxdepth 3 -type d -name vpp_plugins | head -1)
[ -n "$vpp_plugins" ] || { echo "no vpp_plugins directory under $VPP_DIR/lib*" >&2; exit 2; }

build=$WORK-build
echo "== building lb_rl against $VPP_DIR"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$VPP_DIR" \
    -DCMAKE_INSTALL_PREFIX="$WORK-install" >"$WORK-cmake.log" 2>&1 ||
    { tail -20 "$WORK-cmake.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" >>"$WORK-cmake.log" 2>&1 ||
    { tail -40 "$WORK-cmake.log"; exit 1; }
ls -l "$build/lib/vpp_plugins/lb_rl_plugin.so"

# lbd and lbctl of this checkout
export PATH=$(dirname "$PYTHON"):$PATH
"$PYTHON" "$here/check_real_vpp.py" --vpp "$vpp" --vppctl "$vppctl" \
    --plugin-dirs "$vpp_plugins:$build/lib/vpp_plugins" --work "$WORK" \
    --workers "$WORKERS" --encap "$ENCAP"
