"""Data-plane core timings (group ``dataplane``): new-flow selection and the
flow-table hit path, timed in C loops of a throwaway cffi module built from
the product's own sources and flags.

Figures (ns per call, median of repeats):
  select_ns_sed_64     SED argmin over 64 servers (mlb_dp_select): the root of
                       the worker's tournament tree, so O(1); the O(log n)
                       part is paid when a flow starts or ends, which the
                       new_flow_* figures include
  select_ns_alias_64   weighted random via the alias table, 64 servers
  select_ns_sed_256    SED argmin over 256 servers
  flow_lookup_ns       mlb_dp_packet() for a pinned flow (lookup + counters)
  new_flow_ns_sed_64   mlb_dp_packet() for a new flow (lookup miss, SED,
                       insert, tree update) plus the FIN of an older one
                       (end, tree update, FCT sample): a whole flow's cost
  new_flow_ns_sed_256  the same with 256 servers
Goals (issue 3): select_ns_sed_64 <= 100, select_ns_alias_64 <= 20,
flow_lookup_ns <= 50.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

GROUP = "dataplane"
ROOT = Path(__file__).resolve().parents[2]
REPEATS = 7

CDEF = """
double bench_select(mlb_dp_t *dp, uint64_t iters);
double bench_lookup(mlb_dp_t *dp, const uint64_t *keys, uint64_t nkeys, uint64_t iters);
double bench_new_flow(mlb_dp_t *dp, uint64_t iters, uint64_t window);
"""

SOURCE = r"""
#include <time.h>
static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}
static volatile int64_t sink;

double bench_select(mlb_dp_t *dp, uint64_t iters)
{
    int64_t acc = 0;
    uint64_t h = 0x12345;
    double t0 = now_ns();
    for (uint64_t i = 0; i < iters; i++) {
        h += 0x9e3779b97f4a7c15ull;
        acc += mlb_dp_select(dp, 0, h);
    }
    double t1 = now_ns();
    sink = acc;
    return (t1 - t0) / (double)iters;
}

double bench_lookup(mlb_dp_t *dp, const uint64_t *keys, uint64_t nkeys, uint64_t iters)
{
    int64_t acc = 0;
    double t0 = now_ns();
    for (uint64_t i = 0, j = 0; i < iters; i++) {
        acc += mlb_dp_packet(dp, 0, keys[j], 1000000000ull, 100, 0);
        if (++j == nkeys)
            j = 0;
    }
    double t1 = now_ns();
    sink = acc;
    return (t1 - t0) / (double)iters;
}

/* New flow i opens, flow i - window closes: constant table occupancy. */
double bench_new_flow(mlb_dp_t *dp, uint64_t iters, uint64_t window)
{
    int64_t acc = 0;
    const uint64_t base = 0x5bd1e995ull;
    for (uint64_t i = 0; i < window; i++)
        mlb_dp_packet(dp, 0, (i + 1) * base, 1000000000ull, 100, MLB_PKT_SYN);
    double t0 = now_ns();
    for (uint64_t i = window; i < window + iters; i++) {
        acc += mlb_dp_packet(dp, 0, (i + 1) * base, 1000000000ull, 100, MLB_PKT_SYN);
        acc += mlb_dp_packet(dp, 0, (i - window + 1) * base, 1000000000ull, 100,
                             MLB_PKT_FIN);
    }
    double t1 = now_ns();
    for (uint64_t i = iters; i < window + iters; i++)
        mlb_dp_packet(dp, 0, (i + 1) * base, 1000000000ull, 100, MLB_PKT_FIN);
    sink = acc;
    return (t1 - t0) / (double)iters;
}
"""


def _build():
    sys.path.insert(0, str(ROOT / "csrc"))
    from build_ffi import CDEF_HEADERS, CFLAGS, SOURCE_DIRS, cdef_text
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef_text(CDEF_HEADERS) + CDEF)
    sources = sorted(str(p) for d in SOURCE_DIRS for p in (ROOT / d).glob("*.c"))
    ffi.set_source("_bench_dataplane", '#include "vpp_plugin/core/dp_core.h"\n' + SOURCE,
                   sources=sources, include_dirs=[str(ROOT)], extra_compile_args=CFLAGS,
                   libraries=["m"])
    so = ffi.compile(tmpdir=tempfile.mkdtemp(prefix="bench-dataplane-"))
    spec = importlib.util.spec_from_file_location("_bench_dataplane", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def _make_dp(ffi, lib, n: int, mode: int, capacity: int = 1 << 16):
    import numpy as np

    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, n, 1)
    cfg.mode = mode
    cfg.flow_capacity = capacity
    dp = ffi.gc(lib.mlb_dp_create(cfg), lib.mlb_dp_destroy)
    rng = np.random.default_rng(1)
    for i, w in enumerate(rng.uniform(0.5, 4.0, n)):
        lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, float(w))
    return dp


def _median(fn, repeats: int = REPEATS) -> float:
    fn()  # warm up
    return statistics.median(fn() for _ in range(repeats))


def run(progress) -> dict[str, float]:
    import numpy as np

    progress("building the C timing module")
    ffi, lib = _build()
    out: dict[str, float] = {}
    for key, n, mode in [("select_ns_sed_64", 64, lib.MLB_MODE_SED),
                         ("select_ns_alias_64", 64, lib.MLB_MODE_WRANDOM),
                         ("select_ns_sed_256", 256, lib.MLB_MODE_SED)]:
        dp = _make_dp(ffi, lib, n, mode)
        for k in range(1, 20 * n + 1):   # uneven active counts (~20 per server)
            lib.mlb_dp_packet(dp, 0, k * 0x9E3779B1, 10**9, 100, 0)
        out[key] = _median(lambda dp=dp: lib.bench_select(dp, 2_000_000))
        progress(f"{key} = {out[key]:.1f}")
    dp = _make_dp(ffi, lib, 64, lib.MLB_MODE_SED, capacity=1 << 16)
    keys = np.random.default_rng(2).integers(1, 2**63, size=20_000, dtype=np.int64)
    keys = keys.astype(np.uint64)
    for k in keys:
        lib.mlb_dp_packet(dp, 0, int(k), 10**9, 100, 0)
    ckeys = ffi.from_buffer("uint64_t[]", keys)
    out["flow_lookup_ns"] = _median(lambda: lib.bench_lookup(dp, ckeys, len(keys), 4_000_000))
    progress(f"flow_lookup_ns = {out['flow_lookup_ns']:.1f}")
    for key, n in [("new_flow_ns_sed_64", 64), ("new_flow_ns_sed_256", 256)]:
        dp = _make_dp(ffi, lib, n, lib.MLB_MODE_SED, capacity=1 << 16)
        out[key] = _median(lambda dp=dp: lib.bench_new_flow(dp, 500_000, 5_000))
        progress(f"{key} = {out[key]:.1f}")
    return out
