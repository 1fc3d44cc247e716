"""Data-plane core: msg_in apply (validation, counters, static fallback) and
msg_out publish from the timer, through an in-process region."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marllb.daemon._core import ffi, lib

SEC = 1_000_000_000
MS = 1_000_000
GEN = 7
N = 4


def make(n: int = N, workers: int = 2, mode: int = lib.MLB_MODE_SED, static=(1, 1, 1, 1)):
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, n, workers)
    cfg.mode = mode
    cfg.flow_capacity = 1024
    cfg.publish_interval_ns = 250 * MS
    dp = ffi.gc(lib.mlb_dp_create(cfg), lib.mlb_dp_destroy)
    for i, w in enumerate(static):
        lib.mlb_dp_set_server(dp, i, 100 + i, lib.MLB_ADMIN_UP, float(w))
    region = ffi.new("mlb_region_t *")
    assert lib.mlb_region_init(region, lib.mlb_region_size(), n, workers, GEN, 250 * MS,
                               b"vip-test", 0) == 0
    return dp, region


def send(region, weights, *, seq: int, dgen: int = 1, dp_gen: int = GEN, dp_t: int = SEC,
         ttl: int = SEC, mode: int = lib.MLB_MODE_SED, n: int | None = None) -> None:
    m = lib.mlb_in_begin(region)
    m.daemon_gen = dgen
    m.msg_seq = seq
    m.dp_gen = dp_gen
    m.dp_t_ns = dp_t
    m.ttl_ns = ttl
    m.mode = mode
    m.policy_id = 3
    m.n_servers = len(weights) if n is None else n
    for i, w in enumerate(weights):
        m.weight[i] = w
    lib.mlb_in_commit(region, m)


def stats(dp):
    st = ffi.new("mlb_dp_stats_t *")
    lib.mlb_dp_get_stats(dp, st)
    return st


def weights_in_force(dp, n: int = N) -> list[float]:
    return [lib.mlb_dp_weight(dp, i) for i in range(n)]


def snapshot(region):
    out = ffi.new("mlb_msg_out_t *")
    assert lib.mlb_out_snapshot(region, out, 8, ffi.NULL) == 0
    return out


def test_valid_message_applies_weights_and_mode() -> None:
    dp, r = make()
    assert lib.mlb_dp_timer(dp, r, SEC) == lib.MLB_APPLY_NONE
    send(r, [1, 2, 3, 4], seq=1, mode=lib.MLB_MODE_WRANDOM)
    assert lib.mlb_dp_timer(dp, r, SEC + 10 * MS) == lib.MLB_APPLY_ACCEPTED
    st = stats(dp)
    assert st.weights_source == lib.MLB_SRC_DAEMON
    assert st.active_mode == lib.MLB_MODE_WRANDOM
    assert (st.applied_daemon_gen, st.applied_msg_seq, st.msg_in_accepted) == (1, 1, 1)
    assert weights_in_force(dp) == [1, 2, 3, 4]
    # the same message seen again is not a new one
    assert lib.mlb_dp_timer(dp, r, SEC + 20 * MS) == lib.MLB_APPLY_NONE
    assert stats(dp).msg_in_accepted == 1


BAD = {
    "nan": dict(weights=[1, math.nan, 1, 1]),
    "inf": dict(weights=[1, math.inf, 1, 1]),
    "negative": dict(weights=[1, -0.5, 1, 1]),
    "all_zero": dict(weights=[0, 0, 0, 0]),
    "bad_mode": dict(weights=[1, 2, 3, 4], mode=lib.MLB_MODE_COUNT),
    "bad_n": dict(weights=[1, 2, 3, 4], n=3),
    "future": dict(weights=[1, 2, 3, 4], dp_t=5 * SEC),
    "stale": dict(weights=[1, 2, 3, 4], ttl=SEC // 2),  # sent 1 s old
    "old_dp_gen": dict(weights=[1, 2, 3, 4], dp_gen=GEN - 1),
}
COUNTER = {"old_dp_gen": "msg_in_rej_gen", "stale": "msg_in_rej_stale"}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("after_valid", [False, True])
def test_bad_message_rejected_counted_static_in_force(case: str, after_valid: bool) -> None:
    dp, r = make(static=(5, 6, 7, 8))
    now = 2 * SEC
    seq = 1
    if after_valid:
        send(r, [1, 2, 3, 4], seq=seq, dp_t=now)
        assert lib.mlb_dp_timer(dp, r, now) == lib.MLB_APPLY_ACCEPTED
        assert weights_in_force(dp) == [1, 2, 3, 4]
        seq += 1
    kw = dict(BAD[case])
    if case == "stale":
        kw["dp_t"] = now - SEC
    elif "dp_t" not in kw:
        kw["dp_t"] = now
    send(r, kw.pop("weights"), seq=seq, **kw)
    rc = lib.mlb_dp_timer(dp, r, now + MS)
    counter = COUNTER.get(case, "msg_in_rej_invalid")
    expect_rc = {"msg_in_rej_gen": lib.MLB_APPLY_REJ_GEN,
                 "msg_in_rej_stale": lib.MLB_APPLY_REJ_STALE}.get(counter,
                                                                  lib.MLB_APPLY_REJ_INVALID)
    assert rc == expect_rc
    st = stats(dp)
    assert getattr(st, counter) == 1
    assert st.msg_in_rej_stale + st.msg_in_rej_gen + st.msg_in_rej_invalid == 1
    assert st.weights_source == lib.MLB_SRC_STATIC
    assert st.active_mode == lib.MLB_MODE_SED
    assert weights_in_force(dp) == [5, 6, 7, 8]
    assert st.fallbacks == (1 if after_valid else 0)
    # the counters reach the daemon through msg_out
    lib.mlb_dp_timer(dp, r, now + SEC)
    out = snapshot(r)
    meta = out.meta
    assert getattr(meta, counter) == 1
    assert meta.weights_source == lib.MLB_SRC_STATIC
    assert meta.fallbacks == st.fallbacks
    # and the next valid message is taken again
    send(r, [4, 3, 2, 1], seq=seq + 1, dp_t=now + SEC)
    assert lib.mlb_dp_timer(dp, r, now + SEC + MS) == lib.MLB_APPLY_ACCEPTED
    assert weights_in_force(dp) == [4, 3, 2, 1]


def test_static_selection_really_in_force_after_reject() -> None:
    dp, r = make(static=(1, 0, 0, 0))                # static: only server 0
    send(r, [0, 0, 0, 1], seq=1, dp_t=SEC)
    lib.mlb_dp_timer(dp, r, SEC)
    assert lib.mlb_dp_packet(dp, 0, 1, SEC, 1, 0) == 3
    send(r, [0, math.nan, 0, 1], seq=2, dp_t=SEC)
    lib.mlb_dp_timer(dp, r, SEC + MS)
    assert lib.mlb_dp_packet(dp, 0, 2, SEC + MS, 1, 0) == 0
    assert lib.mlb_dp_packet(dp, 0, 1, SEC + MS, 1, 0) == 3   # pinned flow stays


def test_sequence_backwards_rejected_new_daemon_gen_accepted() -> None:
    dp, r = make()
    send(r, [1, 1, 1, 2], seq=10, dgen=5, dp_t=SEC)
    assert lib.mlb_dp_timer(dp, r, SEC) == lib.MLB_APPLY_ACCEPTED
    send(r, [1, 1, 1, 3], seq=9, dgen=5, dp_t=SEC)
    assert lib.mlb_dp_timer(dp, r, SEC + MS) == lib.MLB_APPLY_REJ_STALE
    assert stats(dp).msg_in_rej_stale == 1
    assert stats(dp).weights_source == lib.MLB_SRC_STATIC
    # a restarted daemon starts its sequence at 1 again: accepted
    send(r, [1, 1, 1, 4], seq=1, dgen=6, dp_t=SEC)
    assert lib.mlb_dp_timer(dp, r, SEC + 2 * MS) == lib.MLB_APPLY_ACCEPTED
    st = stats(dp)
    assert (st.applied_daemon_gen, st.applied_msg_seq) == (6, 1)
    assert weights_in_force(dp) == [1, 1, 1, 4]


def test_weights_expire_on_the_data_plane_clock() -> None:
    dp, r = make(static=(2, 2, 2, 2))
    send(r, [1, 2, 3, 4], seq=1, dp_t=SEC, ttl=SEC)
    assert lib.mlb_dp_timer(dp, r, SEC + MS) == lib.MLB_APPLY_ACCEPTED
    lib.mlb_dp_timer(dp, r, 2 * SEC)                   # exactly at the TTL: still valid
    assert stats(dp).weights_source == lib.MLB_SRC_DAEMON
    lib.mlb_dp_timer(dp, r, 2 * SEC + 1)               # past it: static, counted
    st = stats(dp)
    assert st.weights_source == lib.MLB_SRC_STATIC and st.fallbacks == 1
    assert weights_in_force(dp) == [2, 2, 2, 2]
    lib.mlb_dp_timer(dp, r, 3 * SEC)
    assert stats(dp).fallbacks == 1                    # counted once per switch


def test_mode_none_means_configured_mode() -> None:
    dp, r = make(mode=lib.MLB_MODE_LEAST_ACTIVE)
    send(r, [1, 2, 3, 4], seq=1, dp_t=SEC, mode=lib.MLB_MODE_NONE)
    assert lib.mlb_dp_timer(dp, r, SEC) == lib.MLB_APPLY_ACCEPTED
    assert stats(dp).active_mode == lib.MLB_MODE_LEAST_ACTIVE


def test_zero_weight_for_one_up_server_is_valid_and_excludes_it() -> None:
    dp, r = make()
    send(r, [1, 0, 1, 1], seq=1, dp_t=SEC)
    assert lib.mlb_dp_timer(dp, r, SEC) == lib.MLB_APPLY_ACCEPTED
    got = {lib.mlb_dp_packet(dp, 0, k, SEC, 1, 0) for k in range(1, 200)}
    assert got == {0, 2, 3}


def test_weights_only_on_drained_servers_are_invalid() -> None:
    dp, r = make()
    lib.mlb_dp_set_server(dp, 0, 100, lib.MLB_ADMIN_DRAIN, 1.0)
    send(r, [1, 0, 0, 0], seq=1, dp_t=SEC)
    assert lib.mlb_dp_timer(dp, r, SEC) == lib.MLB_APPLY_REJ_INVALID


def test_publish_on_timer_without_traffic() -> None:
    dp, r = make()
    for t in range(8):                                 # 8 calls, 100 ms apart
        lib.mlb_dp_timer(dp, r, SEC + t * 100 * MS)
    # publish every 250 ms: t = 0, 300, 600 ms (+ the first call)
    assert lib.mlb_region_load_u64(ffi.addressof(r.hdr, "out_published")) == 3
    assert r.hdr.heartbeat_ns == SEC + 700 * MS
    out = snapshot(r)
    assert out.meta.t_ns == SEC + 600 * MS
    assert out.meta.dp_gen == GEN
    assert (out.meta.n_servers, out.meta.n_workers) == (N, 2)
    assert [out.servers[i].id for i in range(N)] == [100, 101, 102, 103]


def test_msg_out_carries_counters_reservoirs_and_weight_in_force() -> None:
    dp, r = make(static=(1, 1, 2, 2))
    keys = list(range(1, 401))
    t0 = SEC
    for k in keys:
        lib.mlb_dp_packet(dp, k % 2, k, t0, 100, lib.MLB_PKT_SYN)
    for k in keys[:100]:
        lib.mlb_dp_packet(dp, k % 2, k, t0 + 300 * MS, 50, lib.MLB_PKT_FIN)
    # many timer calls inside one publish interval: ages sampled once per flow
    for j in range(5):
        lib.mlb_dp_timer(dp, r, t0 + SEC + j * 10 * MS)
    out = snapshot(r)
    s = [out.servers[i] for i in range(N)]
    assert sum(x.new_flows for x in s) == 400
    assert sum(x.completed_flows for x in s) == 100
    assert sum(x.active_flows for x in s) == 300
    assert sum(x.packets for x in s) == 500
    assert sum(x.bytes for x in s) == 400 * 100 + 100 * 50
    assert [x.weight for x in s] == [1, 1, 2, 2]
    assert [x.static_weight for x in s] == [1, 1, 2, 2]
    age_seen = sum(out.res[w][i][lib.MLB_RES_AGE].n_seen for w in range(2) for i in range(N))
    fct_seen = sum(out.res[w][i][lib.MLB_RES_FCT].n_seen for w in range(2) for i in range(N))
    assert age_seen == 300 and fct_seen == 100
    ages = [out.res[w][i][lib.MLB_RES_AGE].s[j].value for w in range(2) for i in range(N)
            for j in range(out.res[w][i][lib.MLB_RES_AGE].count)]
    assert np.allclose(ages, 1.0)
    fcts = [out.res[w][i][lib.MLB_RES_FCT].s[j] for w in range(2) for i in range(N)
            for j in range(out.res[w][i][lib.MLB_RES_FCT].count)]
    assert np.allclose([x.value for x in fcts], 0.3)
    assert all(x.t == (t0 + 300 * MS) >> lib.MLB_SAMPLE_T_SHIFT & 0xFFFFFFFF for x in fcts)
    # the merged view the daemon reads
    view = ffi.new("mlb_out_view_t *")
    rng = ffi.new("mlb_rng_t *")
    assert lib.mlb_out_snapshot_view(r, view, rng, 8, ffi.NULL) == 0
    assert sum(view.merged[i][lib.MLB_RES_AGE].n_seen for i in range(N)) == 300
    # next interval: age reservoir is a fresh sample of the flows alive now
    lib.mlb_dp_timer(dp, r, t0 + 2 * SEC)
    out = snapshot(r)
    assert sum(out.res[w][i][lib.MLB_RES_AGE].n_seen for w in range(2) for i in range(N)) == 300


def test_region_of_another_shape_is_refused() -> None:
    dp, _ = make()
    other = ffi.new("mlb_region_t *")
    lib.mlb_region_init(other, lib.mlb_region_size(), N + 1, 2, GEN, 250 * MS, b"x", 0)
    assert lib.mlb_dp_timer(dp, other, SEC) == lib.MLB_DP_BAD_ARG
    assert lib.mlb_region_load_u64(ffi.addressof(other.hdr, "out_published")) == 0


def test_timer_due_says_when_there_is_work() -> None:
    dp, r = make()
    assert lib.mlb_dp_timer_due(dp, r, SEC)            # never published yet
    lib.mlb_dp_timer(dp, r, SEC)
    assert not lib.mlb_dp_timer_due(dp, r, SEC + 10 * MS)
    assert lib.mlb_dp_timer_due(dp, r, SEC + 250 * MS)  # publish interval
    send(r, [1, 2, 3, 4], seq=1, dp_t=SEC, ttl=100 * MS)
    assert lib.mlb_dp_timer_due(dp, r, SEC + 10 * MS)   # a new msg_in
    lib.mlb_dp_timer(dp, r, SEC + 10 * MS)
    assert not lib.mlb_dp_timer_due(dp, r, SEC + 20 * MS)
    assert lib.mlb_dp_timer_due(dp, r, SEC + 101 * MS)  # weights expired


def test_over_real_shm_with_a_daemon_side_attach() -> None:
    import os

    from marllb.daemon.shm import Region, unlink

    name = f"mlb-test-dp-{os.getpid()}"
    dp, _ = make()
    owner = Region.create(name, N, 2, publish_interval_ns=250 * MS, generation=99)
    try:
        daemon = Region.attach(name)
        try:
            lib.mlb_dp_packet(dp, 0, 1234, SEC, 100, lib.MLB_PKT_SYN)
            lib.mlb_dp_timer(dp, owner.ptr, SEC)
            view = ffi.new("mlb_out_view_t *")
            daemon.snapshot_view(view, ffi.new("mlb_rng_t *"))
            assert view.meta.dp_gen == 99
            assert sum(view.servers[i].active_flows for i in range(N)) == 1
            with daemon.write_in() as m:
                m.daemon_gen, m.msg_seq, m.dp_gen = 3, 1, daemon.generation
                m.dp_t_ns, m.ttl_ns, m.mode, m.n_servers = SEC, SEC, lib.MLB_MODE_SED, N
                for i in range(N):
                    m.weight[i] = 1.0 + i
            assert lib.mlb_dp_timer(dp, owner.ptr, SEC + MS) == lib.MLB_APPLY_ACCEPTED
            assert weights_in_force(dp) == [1, 2, 3, 4]
        finally:
            daemon.close()
    finally:
        owner.close()
        unlink(name)
