"""Data-plane core (issue 13): the no-barrier timer form.  The control step
(mlb_dp_control) and each worker's own tick (mlb_dp_worker_tick) publish the
same msg_out as the single-threaded mlb_dp_timer; a publish waits for every
worker; one policy swap per control call."""

from __future__ import annotations

import numpy as np

from marllb.daemon._core import ffi, lib

SEC = 1_000_000_000
MS = 1_000_000
N, W = 5, 3


def make(seed: int = 4):
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, N, W)
    cfg.flow_capacity = 1 << 14          # 4 steps of 4096 slots per tick
    cfg.idle_timeout_ns = 2 * SEC
    cfg.seed = seed
    dp = ffi.gc(lib.mlb_dp_create(cfg), lib.mlb_dp_destroy)
    for i in range(N):
        lib.mlb_dp_set_server(dp, i, 10 + i, lib.MLB_ADMIN_UP, 1.0 + i)
    r = ffi.new("mlb_region_t *")
    assert lib.mlb_region_init(r, lib.mlb_region_size(), N, W, 9, 250 * MS, b"c", 0) == 0
    return dp, r


def send(r, seq: int, dp_t: int) -> None:
    m = lib.mlb_in_begin(r)
    m.daemon_gen, m.msg_seq, m.dp_gen, m.dp_t_ns, m.ttl_ns = 1, seq, 9, dp_t, SEC
    m.mode, m.n_servers = lib.MLB_MODE_NONE, N
    for i in range(N):
        m.weight[i] = 1.0 + (seq + i) % 4
    lib.mlb_in_commit(r, m)


def traffic(dp, rng, t: int) -> None:
    for k in rng.integers(1, 3000, 400):
        k = int(k)
        flags = lib.MLB_PKT_FIN if rng.random() < 0.2 else 0
        lib.mlb_dp_packet(dp, k % W, k * 0x9E3779B97F4A7C15 % 2**64, t, 100, flags)


def frame(r):
    out = ffi.new("mlb_msg_out_t *")
    assert lib.mlb_out_snapshot(r, out, 8, ffi.NULL) == 0
    return out


def rows(f):
    return [(s.id, s.weight, s.new_flows, s.completed_flows, s.active_flows, s.packets,
             s.bytes, s.timeouts) for s in f.servers[0:N]]


def res(f):
    return [(f.res[w][i][k].n_seen, f.res[w][i][k].count,
             tuple(f.res[w][i][k].s[j].value for j in range(f.res[w][i][k].count)))
            for w in range(W) for i in range(N) for k in range(lib.MLB_RES_KINDS)]


def test_control_and_worker_ticks_publish_what_the_timer_publishes() -> None:
    a, ra = make()
    b, rb = make()
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    t = SEC
    for step in range(12):
        t += 250 * MS
        traffic(a, rng_a, t - 100 * MS)
        traffic(b, rng_b, t - 100 * MS)
        send(ra, step + 1, t - MS)
        send(rb, step + 1, t - MS)
        lib.mlb_dp_timer(a, ra, t)
        # b: control opens the publish, each worker ticks in steps, control ends it
        lib.mlb_dp_control(b, rb, t)
        for w in range(W):
            assert lib.mlb_dp_worker_pending(b, w)
            steps = 1
            while lib.mlb_dp_worker_tick(b, w, t) == 2:
                steps += 1
            assert steps == 4 and not lib.mlb_dp_worker_pending(b, w)
        assert lib.mlb_dp_worker_tick(b, 0, t) == 0              # nothing asked
        lib.mlb_dp_control(b, rb, t + 1)
        fa, fb = frame(ra), frame(rb)
        assert fa.meta.frame_no == fb.meta.frame_no == step + 1
        assert rows(fa) == rows(fb)
        assert res(fa) == res(fb)
        assert fa.meta.untracked_flows == fb.meta.untracked_flows
        assert fa.meta.msg_in_accepted == fb.meta.msg_in_accepted == step + 1


def test_publish_waits_for_every_worker() -> None:
    dp, r = make()
    lib.mlb_dp_control(dp, r, SEC)                 # opens frame 1
    for w in range(W - 1):
        while lib.mlb_dp_worker_tick(dp, w, SEC) == 2:
            pass
    lib.mlb_dp_control(dp, r, SEC + 50 * MS)
    assert r.hdr.out_published == 0                # worker W-1 has not ticked
    st = ffi.new("mlb_dp_stats_t *")
    lib.mlb_dp_get_stats(dp, st)
    assert st.publish_waits == 1
    while lib.mlb_dp_worker_tick(dp, W - 1, SEC) == 2:
        pass
    lib.mlb_dp_control(dp, r, SEC + 100 * MS)
    assert r.hdr.out_published == 1
    assert frame(r).meta.t_ns == SEC               # the time the ticks were asked for


def test_one_policy_swap_per_control_call_and_workers_follow() -> None:
    dp, r = make()
    e0 = lib.mlb_dp_policy_epoch(dp)
    send(r, 1, SEC)
    lib.mlb_dp_control(dp, r, SEC + MS)
    assert lib.mlb_dp_policy_epoch(dp) == e0 + 1
    lib.mlb_dp_control(dp, r, SEC + 2 * MS)        # nothing new: no swap
    assert lib.mlb_dp_policy_epoch(dp) == e0 + 1
    # a rejected message after an accepted one: one swap back to static
    m = lib.mlb_in_begin(r)
    m.daemon_gen, m.msg_seq, m.dp_gen, m.dp_t_ns, m.ttl_ns = 1, 2, 9, SEC, SEC
    m.n_servers = N
    m.weight[0] = float("nan")
    lib.mlb_in_commit(r, m)
    lib.mlb_dp_control(dp, r, SEC + 3 * MS)
    assert lib.mlb_dp_policy_epoch(dp) == e0 + 2
    # SED on a worker uses the new weights (its tree rebuilt by itself)
    w = [lib.mlb_dp_weight(dp, i) for i in range(N)]
    assert lib.mlb_dp_select(dp, 1, 0) == int(np.argmax(w))
