"""Group `core`: reservoir sampler and region snapshot speed (issues 2, 15).

The C loops time themselves with the thread's CPU clock
(CLOCK_THREAD_CPUTIME_ID): the cost of the work itself, not the time other
processes on a shared machine held the core.  On a quiet machine the two
agree."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from marllb.daemon._core import ffi, lib  # noqa: E402
from tests.cmod import build  # noqa: E402

GROUP = "core"
REPEATS = 7

CDEF = """
double bench_add_ns(uint64_t n);
double bench_stats_ns(const mlb_reservoir_t *r, uint64_t n);
double bench_view_ns(const mlb_region_t *r, uint64_t n);
double bench_copy_ns(const mlb_region_t *r, uint64_t n);
"""

SRC = r"""
#include <stdlib.h>
#include <time.h>
static double now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}
/* single stream, the data plane's inline add */
double bench_add_ns(uint64_t n) {
    static mlb_sampler_t s;
    mlb_sampler_init(&s, 1);
    double t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) mlb_sampler_add_inline(&s, i, (double)i);
    double t1 = now_ns();
    if (s.r.n_seen != n) abort();
    return (t1 - t0) / n;
}
double bench_stats_ns(const mlb_reservoir_t *r, uint64_t n) {
    mlb_stats_t st; double acc = 0;
    double t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        mlb_reservoir_stats(r, 1000000000ull + i, 0.9, &st);
        acc += st.dp90;
    }
    double t1 = now_ns();
    if (acc != acc) abort();
    return (t1 - t0) / n;
}
double bench_view_ns(const mlb_region_t *r, uint64_t n) {
    mlb_out_view_t *v = malloc(sizeof(*v)); mlb_rng_t rng = {1}; uint32_t rt = 0;
    double t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) if (mlb_out_snapshot_view(r, v, &rng, 8, &rt)) abort();
    double t1 = now_ns();
    free(v);
    return (t1 - t0) / n;
}
double bench_copy_ns(const mlb_region_t *r, uint64_t n) {
    mlb_msg_out_t *d = malloc(sizeof(*d)); uint32_t rt = 0;
    double t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) if (mlb_out_snapshot(r, d, 8, &rt)) abort();
    double t1 = now_ns();
    free(d);
    return (t1 - t0) / n;
}
"""


def _median(f, repeats: int = REPEATS) -> float:
    return statistics.median(f() for _ in range(repeats))


def _full_region(n_servers: int, n_workers: int):
    r = ffi.new("mlb_region_t *")
    lib.mlb_region_init(r, lib.mlb_region_size(), n_servers, n_workers, 1, 10**8, b"bench", 1)
    s = ffi.new("mlb_sampler_t *")
    vals = np.random.default_rng(0).exponential(0.2, 1000)
    with_frame = lib.mlb_out_begin(r)
    with_frame.meta.n_servers, with_frame.meta.n_workers = n_servers, n_workers
    for w in range(n_workers):
        for srv in range(n_servers):
            for k in range(lib.MLB_RES_KINDS):
                lib.mlb_sampler_init(s, 1 + w * 1000 + srv * 3 + k)
                lib.mlb_sampler_add_batch(s, ffi.from_buffer("double[]", vals), ffi.NULL, 5, 1000)
                with_frame.res[w][srv][k] = s.r
    lib.mlb_out_commit(r, with_frame)
    return r


def run(progress) -> dict[str, float]:
    mod = build("mlb_bench_core", CDEF, SRC)
    b = mod.lib
    progress("reservoir add (C loop)")
    add_ns = _median(lambda: b.bench_add_ns(200_000_000))
    progress("reservoir add_batch (numpy through cffi)")
    sampler = ffi.new("mlb_sampler_t *")
    arr = np.random.default_rng(1).random(20_000_000)
    buf = ffi.from_buffer("double[]", arr)

    def batch() -> float:
        lib.mlb_sampler_init(sampler, 3)
        t0 = time.perf_counter()
        lib.mlb_sampler_add_batch(sampler, buf, ffi.NULL, 0, len(arr))
        return (time.perf_counter() - t0) / len(arr)

    batch_s = _median(batch)
    progress("stats")
    s = ffi.new("mlb_sampler_t *")
    lib.mlb_sampler_init(s, 2)
    ts = np.arange(1000, dtype=np.uint64) * 1_000_000
    lib.mlb_sampler_add_batch(s, ffi.from_buffer("double[]", arr[:1000]),
                              ffi.from_buffer("uint64_t[]", ts), 0, 1000)
    rp = mod.ffi.cast("mlb_reservoir_t *", ffi.cast("uintptr_t", ffi.addressof(s.r)))
    stats_ns = _median(lambda: b.bench_stats_ns(rp, 200_000))
    progress("snapshots (64 servers x 4 workers, full reservoirs)")
    out = {
        "reservoir_add_per_s": 1e9 / add_ns,
        "reservoir_add_batch_per_s": 1.0 / batch_s,
        "reservoir_stats_ns": stats_ns,
    }
    for n_servers, tag in ((64, "64x4"), (256, "256x4")):
        r = _full_region(n_servers, 4)
        rp = mod.ffi.cast("mlb_region_t *", ffi.cast("uintptr_t", r))
        out[f"snapshot_ns_{tag}"] = _median(lambda rp=rp: b.bench_view_ns(rp, 2000))
        out[f"snapshot_copy_ns_{tag}"] = _median(lambda rp=rp: b.bench_copy_ns(rp, 500))
    return out
