"""Data-plane core (issue 13): no stop-the-world, checked with real threads.

A C harness runs worker threads (mlb_dp_packet frames + their own
mlb_dp_worker_tick) beside a control thread (mlb_dp_control with a fresh
msg_in every few steps, and a wait for one worker loop after each policy
swap, as the VPP glue does with vlib_worker_wait_one_loop), with no barrier
at all, built with ThreadSanitizer: any data race between the control step
and the workers fails the test.  At the end the counters must add up and
every published msg_out frame must be whole."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HARNESS = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vpp_plugin/core/dp_core.h"

#define W 3
#define N 6
#define KEYS 3000

static mlb_dp_t *dp;
static _Atomic uint64_t loops[W];
static _Atomic uint64_t clock_ns;
static _Atomic int stop;
static uint64_t sent[W], dropped[W];

static void *worker(void *arg)
{
    uint32_t w = (uint32_t)(uintptr_t)arg;
    mlb_rng_t rng = {0x1234 + w};
    while (!atomic_load(&stop)) {
        uint64_t t = atomic_load(&clock_ns);
        for (int i = 0; i < 64; i++) {             /* one frame */
            uint64_t r = mlb_rng_u64(&rng);
            uint64_t key = (r % KEYS) * W + w + 1;
            uint32_t x = (uint32_t)(r >> 40) % 100, flags;
            flags = x < 30 ? MLB_PKT_SYN : x < 40 ? MLB_PKT_FIN : x < 42 ? MLB_PKT_RST
                  : x < 45 ? MLB_PKT_NOFLOW : MLB_PKT_MIDFLOW;
            if (mlb_dp_packet(dp, w, key * 0x9e3779b97f4a7c15ull, t, 100, flags) >= 0)
                sent[w]++;
            else
                dropped[w]++;
        }
        while (mlb_dp_worker_pending(dp, w) && mlb_dp_worker_tick(dp, w, t) == 2)
            ;
        atomic_fetch_add(&loops[w], 1);             /* end of this worker's loop */
    }
    return NULL;
}

static void wait_one_loop(void)
{
    uint64_t seen[W];
    for (int w = 0; w < W; w++)
        seen[w] = atomic_load(&loops[w]);
    for (int w = 0; w < W; w++)
        while (atomic_load(&loops[w]) == seen[w])
            ;
}

int main(void)
{
    mlb_dp_config_t cfg;
    mlb_dp_config_default(&cfg, N, W);
    cfg.flow_capacity = 1024;                       /* full buckets: untracked too */
    cfg.idle_timeout_ns = 200000000ull;
    cfg.close_timeout_ns = 50000000ull;
    cfg.publish_interval_ns = 20000000ull;
    cfg.mode = MLB_MODE_SED;
    dp = mlb_dp_create(&cfg);
    mlb_region_t *r = calloc(1, mlb_region_size());
    if (!dp || !r || mlb_region_init(r, mlb_region_size(), N, W, 5,
                                     cfg.publish_interval_ns, "t", 1) != MLB_OK)
        return 2;
    for (uint32_t i = 0; i < N; i++)
        mlb_dp_set_server(dp, i, i, MLB_ADMIN_UP, 1.0 + i);
    atomic_store(&clock_ns, 1000000000ull);
    pthread_t th[W];
    for (uintptr_t w = 0; w < W; w++)
        pthread_create(&th[w], NULL, worker, (void *)w);
    uint64_t swaps = 0, seq = 0, frames_ok = 0;
    mlb_msg_out_t *snap = malloc(sizeof(*snap));
    for (int step = 0; step < 1500; step++) {
        uint64_t now = atomic_fetch_add(&clock_ns, 1000000ull) + 1000000ull;
        if (step % 7 == 0) {                        /* the daemon writes weights */
            mlb_msg_in_t *m = mlb_in_begin(r);
            m->daemon_gen = 1;
            m->msg_seq = ++seq;
            m->dp_gen = 5;
            m->dp_t_ns = now;
            m->ttl_ns = 1000000000ull;
            m->mode = 1 + seq % 5;
            m->n_servers = N;
            for (int i = 0; i < N; i++)
                m->weight[i] = (double)(1 + (seq + i) % 4);
            mlb_in_commit(r, m);
        }
        uint64_t e = mlb_dp_policy_epoch(dp);
        mlb_dp_control(dp, r, now);
        if (mlb_dp_policy_epoch(dp) != e) {
            swaps++;
            wait_one_loop();
        }
        if (mlb_out_snapshot(r, snap, 8, NULL) == MLB_OK && snap->meta.n_servers == N &&
            snap->meta.n_workers == W && snap->meta.dp_gen == 5)
            frames_ok++;
    }
    atomic_store(&stop, 1);
    for (int w = 0; w < W; w++)
        pthread_join(th[w], NULL);
    /* workers stopped: the single-threaded timer may run */
    mlb_dp_timer(dp, r, atomic_load(&clock_ns) + 1000);
    mlb_dp_stats_t st;
    mlb_dp_get_stats(dp, &st);
    uint64_t packets = 0, active = 0, total_sent = 0, total_drop = 0;
    for (uint32_t i = 0; i < N; i++) {
        mlb_server_stats_t s;
        mlb_dp_get_server(dp, i, &s);
        packets += s.packets;
        active += s.active_flows;
    }
    for (int w = 0; w < W; w++) {
        total_sent += sent[w];
        total_drop += dropped[w];
    }
    printf("swaps %llu frames %llu ok %llu packets %llu sent %llu drops %llu/%llu "
           "active %llu flows %llu\n",
           (unsigned long long)swaps, (unsigned long long)st.frames_published,
           (unsigned long long)frames_ok, (unsigned long long)packets,
           (unsigned long long)total_sent, (unsigned long long)total_drop,
           (unsigned long long)st.no_server_drops, (unsigned long long)active,
           (unsigned long long)st.flows);
    int ok = swaps > 50 && st.frames_published > 20 && frames_ok > 0 &&
             packets == total_sent && total_drop == st.no_server_drops &&
             active == st.flows && st.msg_in_accepted > 50;
    return ok ? 0 : 1;
}
"""


def _build(tmp: Path, sanitize: bool) -> Path | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None
    src = tmp / "harness.c"
    src.write_text(HARNESS)
    exe = tmp / ("harness_tsan" if sanitize else "harness")
    flags = ["-std=gnu11", "-O1", "-g", "-pthread", "-Wall", "-Wextra"]
    if sanitize:
        flags.append("-fsanitize=thread")
    cmd = [cc, *flags, f"-I{ROOT}", str(src), str(ROOT / "csrc" / "region.c"),
           str(ROOT / "csrc" / "reservoir.c"), str(ROOT / "vpp_plugin" / "core" / "dp_core.c"),
           "-lm", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        if sanitize and "tsan" in r.stderr.lower():
            return None
        raise AssertionError(r.stderr)
    return exe


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "tsan"])
def test_control_beside_workers_without_a_barrier(sanitize: bool, tmp_path: Path) -> None:
    exe = _build(tmp_path, sanitize)
    if exe is None:
        pytest.skip("no C compiler" if not sanitize else "no ThreadSanitizer runtime")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300,
                       env={"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"})
    assert "ThreadSanitizer" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
