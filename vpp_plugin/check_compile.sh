#!/usr/bin/env bash
# Syntax-check the lb_rl glue against a VPP source tree, without building
# VPP (about 10 s plus vppapigen): VPP's config headers are generated from
# their .in templates, vppapigen (needs python3 with `ply`) runs over VPP's
# .api files and lb_rl.api, then each glue file goes through
# `gcc -fsyntax-only` under VPP's own warning flags.  This checks types,
# prototypes, macros and API structs, not linking (a plugin resolves VPP's
# symbols when VPP loads it).
#
#   VPP_SRC=~/vpp [PYTHON=python3] [OUT=/tmp/lb_rl-check] vpp_plugin/check_compile.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
: "${VPP_SRC:?set VPP_SRC to a VPP checkout (the directory holding src/)}"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/lb_rl-check}
src=$VPP_SRC/src
gen=$OUT/gen
mkdir -p "$gen/vppinfra" "$gen/vlib" "$gen/vpp/vnet" "$gen/vpp/app" "$gen/lb_rl"

"$PYTHON" -c 'import ply' 2>/dev/null || {
    echo "check_compile: $PYTHON lacks the ply module (pip install ply)" >&2; exit 2; }

# config headers: the values a release x86_64 build uses
sed -e 's/@LOG2_CACHE_LINE_BYTES@/6/' -e 's/@N_PREFETCHES@/16/' \
    -e 's|@VPP_LIBRARY_DIR@|lib/x86_64-linux-gnu|' -e 's/@VECTOR_GROW_BY_ONE@/0/' \
    "$src/vppinfra/config.h.in" > "$gen/vppinfra/config.h"
sed -e 's/@PRE_DATA_SIZE@/128/' -e 's/@VLIB_BUFFER_ALIGN@/64/' \
    -e 's/#cmakedefine01 \(.*\)/#define \1 0/' -e 's/@BUFFER_ALLOC_FAULT_INJECTOR@/0/' \
    -e 's/@VLIB_PROCESS_LOG2_STACK_SIZE@/16/' \
    "$src/vlib/config.h.in" > "$gen/vlib/config.h"
sed -e 's/@VPP_SANITIZE_ADDR_OPTIONS@//' -e 's|#cmakedefine \(.*\)|/* #undef \1 */|' \
    "$src/vpp/vnet/config.h.in" > "$gen/vpp/vnet/config.h"
cat > "$gen/vpp/app/version.h" <<'EOF'
#define VPP_BUILD_USER "check"
#define VPP_BUILD_HOST "check"
#define VPP_BUILD_TOPDIR "check"
#define VPP_BUILD_VER "check"
EOF

apigen() {  # apigen <file.api> <outdir>: C headers, and the JSON header api.c includes
    mkdir -p "$2"
    "$PYTHON" "$src/tools/vppapigen/vppapigen.py" --includedir "$src" --input "$1" \
        --outputdir "$2" --output "$2/$(basename "$1").h" >/dev/null
    "$PYTHON" "$src/tools/vppapigen/vppapigen.py" --includedir "$src" --input "$1" JSON \
        --outputdir "$2" --output "$2/$(basename "$1").json" >/dev/null
}
if [ ! -e "$gen/.api_done" ]; then   # VPP's own .api files: once per OUT
    (cd "$src" && find vnet vlibmemory vlibapi vpp -name '*.api') | while read -r f; do
        apigen "$src/$f" "$gen/$(dirname "$f")"
    done
    touch "$gen/.api_done"
fi
apigen "$here/lb_rl.api" "$gen/lb_rl"

flags=(-std=gnu11 -Werror -Wall -O3 -march=x86-64-v2 -mtune=generic -fstack-protector
       -fno-common -Wno-address-of-packed-member -Wno-psabi -fPIC -fsyntax-only
       -I"$gen" -I"$src" -I"$src/plugins" -I"$gen/lb_rl" -I"$here" -I"$root")
rc=0
for f in "$here"/*.c; do
    if gcc "${flags[@]}" "$f"; then
        echo "ok   $(basename "$f")"
    else
        echo "FAIL $(basename "$f")"; rc=1
    fi
done
exit $rc
