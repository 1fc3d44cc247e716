"""Data-plane core (issue 13): TCP affinity through FIN, consistent-hash
fallback for untracked flows, counters counted once, number bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from marllb.daemon._core import ffi, lib

SEC = 1_000_000_000
MS = 1_000_000
SYN, FIN, RST = lib.MLB_PKT_SYN, lib.MLB_PKT_FIN, lib.MLB_PKT_RST
MODES = range(1, lib.MLB_MODE_COUNT)


def make_dp(n: int, mode: int, *, workers: int = 1, capacity: int = 1 << 12,
            idle_s: float = 40.0, close_s: float = 10.0, weights=None, seed: int = 3):
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, n, workers)
    cfg.mode = mode
    cfg.flow_capacity = capacity
    cfg.idle_timeout_ns = int(idle_s * SEC)
    cfg.close_timeout_ns = int(close_s * SEC)
    cfg.seed = seed
    dp = lib.mlb_dp_create(cfg)
    assert dp != ffi.NULL
    dp = ffi.gc(dp, lib.mlb_dp_destroy)
    for i, w in enumerate(weights or [1.0] * n):
        assert lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, float(w)) == 0
    return dp


def keys(n: int, seed: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(1, 2**63, n, dtype=np.int64)]


def stats(dp):
    st = ffi.new("mlb_dp_stats_t *")
    lib.mlb_dp_get_stats(dp, st)
    return st


def server(dp, i: int):
    s = ffi.new("mlb_server_stats_t *")
    assert lib.mlb_dp_get_server(dp, i, s) == 0
    return s


def fct_seen(dp, n: int, workers: int = 1) -> int:
    return sum(lib.mlb_dp_reservoir(dp, w, i, lib.MLB_RES_FCT).n_seen
               for w in range(workers) for i in range(n))


# ---------- flow end ----------

@pytest.mark.parametrize("mode", MODES)
def test_packets_after_client_fin_go_to_the_same_server(mode: int) -> None:
    """SYN, data, client FIN, then the connection's last ACKs: every packet
    goes to one server, even with weights changing in between (a fresh choice
    in WRANDOM/P2C/SED would land elsewhere for some of them)."""
    n = 8
    dp = make_dp(n, mode, weights=[1.0] * n)
    ks = keys(400, mode)
    home = {k: lib.mlb_dp_packet(dp, 0, k, SEC, 60, SYN) for k in ks}
    for k in ks:
        assert lib.mlb_dp_packet(dp, 0, k, SEC + MS, 1500, 0) == home[k]
    for k in ks:
        assert lib.mlb_dp_packet(dp, 0, k, 2 * SEC, 60, FIN) == home[k]
    # everything that would steer a new choice elsewhere
    for i in range(n):
        lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, float(1 + (i * 5) % 7))
    lib.mlb_dp_set_mode(dp, 1 + mode % (lib.MLB_MODE_COUNT - 1))
    for rep in range(3):   # the server's FIN-ACK answered: ACKs, a retransmitted FIN
        for k in ks:
            flags = FIN if rep == 1 else 0
            assert lib.mlb_dp_packet(dp, 0, k, 2 * SEC + (rep + 1) * MS, 60, flags) == home[k]
    st = stats(dp)
    assert st.flows == 0 and st.closing == len(ks)
    assert sum(lib.mlb_dp_server_active(dp, i) for i in range(n)) == 0   # honest active
    per = [server(dp, i) for i in range(n)]
    assert sum(p.completed_flows for p in per) == len(ks)                # counted once
    assert sum(p.new_flows for p in per) == len(ks)
    assert fct_seen(dp, n) == len(ks)                                    # FCT once
    assert sum(p.packets for p in per) == 6 * len(ks)
    vals = [r.s[j].value for i in range(n)
            for r in [lib.mlb_dp_reservoir(dp, 0, i, lib.MLB_RES_FCT)] for j in range(r.count)]
    assert np.allclose(vals, 1.0)                                        # FIN - SYN


def test_closed_entry_freed_after_close_timeout_and_reused_under_pressure() -> None:
    dp = make_dp(4, lib.MLB_MODE_SED, capacity=64, close_s=2.0)
    ks = keys(64, 5)
    for k in ks:
        lib.mlb_dp_packet(dp, 0, k, SEC, 1, SYN)
    opened = stats(dp).flows
    for k in ks:
        lib.mlb_dp_packet(dp, 0, k, SEC, 1, FIN)
    assert stats(dp).flows == 0 and stats(dp).closing == opened
    # a table full of closed entries takes new flows as an empty one does
    fresh = make_dp(4, lib.MLB_MODE_SED, capacity=64, close_s=2.0)
    before = stats(dp).untracked_flows
    for k in keys(64, 6):
        lib.mlb_dp_packet(dp, 0, k, SEC + MS, 1, SYN)
        lib.mlb_dp_packet(fresh, 0, k, SEC + MS, 1, SYN)
    assert stats(dp).untracked_flows - before == stats(fresh).untracked_flows
    assert stats(dp).flows == stats(fresh).flows > 32
    # closed entries run out after close_timeout (the timer's sweep)
    dp2 = make_dp(4, lib.MLB_MODE_SED, close_s=2.0)
    for k in ks:
        lib.mlb_dp_packet(dp2, 0, k, SEC, 1, SYN)
        lib.mlb_dp_packet(dp2, 0, k, SEC, 1, FIN)
    lib.mlb_dp_timer(dp2, ffi.NULL, 2 * SEC)
    assert stats(dp2).closing == len(ks)
    lib.mlb_dp_timer(dp2, ffi.NULL, 3 * SEC + 1)
    assert stats(dp2).closing == 0 and stats(dp2).flows == 0
    assert sum(server(dp2, i).timeouts for i in range(4)) == 0   # not counted again


def test_syn_on_a_closed_entry_is_a_new_connection() -> None:
    dp = make_dp(2, lib.MLB_MODE_SED)
    lib.mlb_dp_packet(dp, 0, 77, SEC, 1, SYN)
    lib.mlb_dp_packet(dp, 0, 77, 2 * SEC, 1, FIN)
    lib.mlb_dp_packet(dp, 0, 77, 3 * SEC, 1, SYN)
    assert lib.mlb_dp_flow_state(dp, 0, 77) == lib.MLB_DP_FLOW_OPEN
    assert sum(server(dp, i).new_flows for i in range(2)) == 2
    assert sum(lib.mlb_dp_server_active(dp, i) for i in range(2)) == 1


def test_rst_closes_and_idle_flow_counted_once() -> None:
    dp = make_dp(2, lib.MLB_MODE_SED, idle_s=5.0)
    lib.mlb_dp_packet(dp, 0, 5, SEC, 1, SYN)
    lib.mlb_dp_packet(dp, 0, 5, SEC + 10, 1, RST)
    lib.mlb_dp_packet(dp, 0, 6, SEC, 1, SYN)         # left open: idle timeout
    lib.mlb_dp_timer(dp, ffi.NULL, 20 * SEC)
    per = [server(dp, i) for i in range(2)]
    assert sum(p.completed_flows for p in per) == 2
    assert sum(p.timeouts for p in per) == 1
    assert fct_seen(dp, 2) == 2
    assert stats(dp).closing == 0 and stats(dp).flows == 0


# ---------- untracked flows ----------

@pytest.mark.parametrize("mode", MODES)
def test_untracked_flows_never_change_server_while_weights_stay(mode: int) -> None:
    n = 6
    w = [1.0, 2.0, 3.0, 0.5, 4.0, 1.5]
    dp = make_dp(n, mode, capacity=64, weights=w, seed=mode)
    ks = keys(3000, 40 + mode)
    first = {k: lib.mlb_dp_packet(dp, 0, k, SEC, 100, SYN) for k in ks}
    untracked = [k for k in ks if lib.mlb_dp_flow_state(dp, 0, k) == lib.MLB_DP_FLOW_NONE]
    assert len(untracked) > 2000
    rng = np.random.default_rng(mode)
    for rep in range(4):
        for k in rng.permutation(untracked):
            assert lib.mlb_dp_packet(dp, 0, int(k), SEC + (rep + 1) * MS, 100, 0) == first[int(k)]
    # the same answer as the published fallback table, and lone FIN/RST too
    for k in untracked[:200]:
        assert lib.mlb_dp_fallback_lookup(dp, k) == first[k]
        assert lib.mlb_dp_packet(dp, 0, k, 2 * SEC, 60, FIN) == first[k]
    st = stats(dp)
    assert st.untracked_packets == 5 * len(untracked) + 200


@pytest.mark.parametrize("mode", MODES)
def test_untracked_flow_keeps_its_server_when_a_slot_frees(mode: int) -> None:
    """An untracked connection's later packets (MIDFLOW: TCP without SYN)
    are pinned where the consistent hash sent the earlier ones, not to a
    fresh choice, when room appears in the table."""
    n = 5
    dp = make_dp(n, mode, capacity=64, idle_s=5.0, weights=[1, 2, 3, 4, 5], seed=mode)
    pinned = keys(64 * 6, 50 + mode)
    for k in pinned:
        lib.mlb_dp_packet(dp, 0, k, SEC, 1, SYN)
    extra = keys(3000, 60 + mode)
    first = {k: lib.mlb_dp_packet(dp, 0, k, 2 * SEC, 1, SYN) for k in extra}
    untracked = [k for k in extra if lib.mlb_dp_flow_state(dp, 0, k) == lib.MLB_DP_FLOW_NONE]
    assert len(untracked) > 1000
    # the first (pinned) flows idle out: their slots free up
    for k in untracked:
        s = lib.mlb_dp_packet(dp, 0, k, 6 * SEC + SEC // 2, 1, lib.MLB_PKT_MIDFLOW)
        assert s == first[k]
    now_pinned = [k for k in untracked
                  if lib.mlb_dp_flow_state(dp, 0, k) == lib.MLB_DP_FLOW_OPEN]
    assert len(now_pinned) > 20
    for k in now_pinned:
        assert lib.mlb_dp_flow_server(dp, 0, k) == first[k]
        assert lib.mlb_dp_packet(dp, 0, k, 7 * SEC, 1, lib.MLB_PKT_MIDFLOW) == first[k]


def test_untracked_shares_follow_the_weights() -> None:
    w = [1.0, 2.0, 3.0, 0.0, 4.0]
    dp = make_dp(5, lib.MLB_MODE_SED, weights=w)
    got = np.bincount([lib.mlb_dp_fallback_lookup(dp, k) for k in keys(40_000, 9)],
                      minlength=5)
    assert got[3] == 0
    exp = np.array([1, 2, 3, 4]) / 10 * got.sum()
    # Maglev shares are within a few percent of the weights
    assert np.all(np.abs(got[[0, 1, 2, 4]] / exp - 1) < 0.1)


def test_untracked_flows_follow_a_weight_change_and_only_then() -> None:
    dp = make_dp(4, lib.MLB_MODE_WRANDOM, capacity=64, weights=[1, 1, 1, 1])
    ks = keys(2000, 10)
    before = [lib.mlb_dp_fallback_lookup(dp, k) for k in ks]
    for i in range(4):   # the same weights again: the same table
        lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, 1.0)
    assert [lib.mlb_dp_fallback_lookup(dp, k) for k in ks] == before
    lib.mlb_dp_set_server(dp, 0, 0, lib.MLB_ADMIN_UP, 3.0)
    after = [lib.mlb_dp_fallback_lookup(dp, k) for k in ks]
    moved = np.mean([a != b for a, b in zip(before, after, strict=True)])
    assert 0.05 < moved < 0.6          # some move to the heavier server, not all
    assert sps.chisquare(np.bincount(after, minlength=4), np.array([3, 1, 1, 1]) / 6 * 2000
                         ).pvalue > 1e-4


def test_noflow_packets_go_by_the_hash_and_pin_nothing() -> None:
    dp = make_dp(4, lib.MLB_MODE_WRANDOM, weights=[1, 2, 3, 4])
    ks = keys(500, 12)
    for k in ks:
        for _ in range(3):
            assert lib.mlb_dp_packet(dp, 0, k, SEC, 10, lib.MLB_PKT_NOFLOW) == \
                lib.mlb_dp_fallback_lookup(dp, k)
    st = stats(dp)
    assert st.flows == 0 and st.closing == 0 and st.untracked_flows == 0
    assert st.untracked_packets == 1500
    assert sum(server(dp, i).packets for i in range(4)) == 1500
    assert sum(server(dp, i).new_flows for i in range(4)) == 0


# ---------- counters ----------

def test_packets_and_drops_counted_once() -> None:
    dp = make_dp(3, lib.MLB_MODE_SED, capacity=64)
    ks = keys(300, 11)
    sent = 0
    for k in ks:
        for flags in (SYN, 0, FIN, 0):
            assert lib.mlb_dp_packet(dp, 0, k, SEC, 10, flags) >= 0
            sent += 1
    assert sum(server(dp, i).packets for i in range(3)) == sent
    assert stats(dp).no_server_drops == 0
    for i in range(3):
        lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_DOWN, 1.0)
    for k in ks[:50]:
        assert lib.mlb_dp_packet(dp, 0, k, 2 * SEC, 10, 0) == lib.MLB_DP_NO_SERVER
    st = stats(dp)
    assert st.no_server_drops == 50
    assert sum(server(dp, i).packets for i in range(3)) == sent     # drops are not packets


# ---------- TTL cap and bounds ----------

def _region(n: int, workers: int = 1):
    r = ffi.new("mlb_region_t *")
    assert lib.mlb_region_init(r, lib.mlb_region_size(), n, workers, 7, 250 * MS, b"t", 0) == 0
    return r


def _send(r, weights, *, seq: int, dp_t: int, ttl: int) -> None:
    m = lib.mlb_in_begin(r)
    m.daemon_gen, m.msg_seq, m.dp_gen, m.dp_t_ns, m.ttl_ns = 1, seq, 7, dp_t, ttl
    m.mode, m.n_servers = lib.MLB_MODE_NONE, len(weights)
    for i, w in enumerate(weights):
        m.weight[i] = w
    lib.mlb_in_commit(r, m)


def test_msg_in_ttl_is_capped_whatever_the_daemon_says() -> None:
    cap = lib.MLB_DP_TTL_MAX_MS * MS
    dp, r = make_dp(2, lib.MLB_MODE_SED), _region(2)
    _send(r, [1.0, 5.0], seq=1, dp_t=SEC, ttl=3600 * SEC)
    assert lib.mlb_dp_timer(dp, r, SEC + MS) == lib.MLB_APPLY_ACCEPTED
    lib.mlb_dp_timer(dp, r, SEC + cap)
    assert stats(dp).weights_source == lib.MLB_SRC_DAEMON
    lib.mlb_dp_timer(dp, r, SEC + cap + 1)               # past the cap: static again
    assert stats(dp).weights_source == lib.MLB_SRC_STATIC and stats(dp).fallbacks == 1
    # a message already older than the cap is stale, even with a day of TTL
    _send(r, [1.0, 5.0], seq=2, dp_t=2 * SEC, ttl=86400 * SEC)
    assert lib.mlb_dp_timer(dp, r, 2 * SEC + cap + MS) == lib.MLB_APPLY_REJ_STALE


@pytest.mark.parametrize("field,value", [
    ("idle_timeout_ns", 0), ("idle_timeout_ns", (lib.MLB_DP_IDLE_MAX_S + 1) * SEC),
    ("idle_timeout_ns", 2**64 - 1), ("close_timeout_ns", 0),
    ("publish_interval_ns", 0), ("publish_interval_ns", (lib.MLB_DP_PUBLISH_MAX_MS + 1) * MS)])
def test_config_bounds_refused_by_name(field: str, value: int) -> None:
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, 2, 1)
    setattr(cfg, field, value)
    name = ffi.new("char **")
    assert lib.mlb_dp_config_check(cfg, ffi.cast("const char **", name)) == lib.MLB_ERR_ARG
    assert ffi.string(name[0]).decode() == field
    assert lib.mlb_dp_create(cfg) == ffi.NULL


@pytest.mark.parametrize("s,ok", [(40.0, True), (1e-6, True), (86400.0, True), (0.0, False),
                                  (-1.0, False), (86401.0, False), (math.nan, False),
                                  (math.inf, False), (-math.inf, False), (1e-12, False)])
def test_check_seconds(s: float, ok: bool) -> None:
    out = ffi.new("uint64_t *", 123)
    rc = lib.mlb_dp_check_seconds(s, lib.MLB_DP_IDLE_MAX_S, out)
    assert (rc == lib.MLB_OK) == ok
    if ok:
        assert out[0] == int(s * 1e9)
    else:
        assert out[0] == 123                              # nothing changed


@pytest.mark.parametrize("ms,ok", [(1, True), (50, True), (10_000, True), (0, False),
                                   (-5, False), (0.5, False), (10_001, False),
                                   (math.nan, False), (1e300, False)])
def test_check_timer_ms(ms: float, ok: bool) -> None:
    assert (lib.mlb_dp_check_timer_ms(ms) == lib.MLB_OK) == ok
