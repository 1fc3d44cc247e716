"""Data-plane core (vpp_plugin/core/) through cffi: new-flow selection,
admin states, flow affinity, idle timeout, Maglev disruption."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from marllb.daemon._core import ffi, lib

SEC = 1_000_000_000
FIN = lib.MLB_PKT_FIN


def make_dp(n: int, mode: int = lib.MLB_MODE_SED, workers: int = 1, capacity: int = 1 << 14,
            idle_s: float = 40.0, seed: int = 1, weights=None):
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, n, workers)
    cfg.mode = mode
    cfg.flow_capacity = capacity
    cfg.idle_timeout_ns = int(idle_s * SEC)
    cfg.seed = seed
    dp = lib.mlb_dp_create(cfg)
    assert dp != ffi.NULL
    dp = ffi.gc(dp, lib.mlb_dp_destroy)
    if weights is not None:
        for i, w in enumerate(weights):
            assert lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, float(w)) == 0
    return dp


def active(dp, n: int) -> np.ndarray:
    return np.array([lib.mlb_dp_server_active(dp, i) for i in range(n)])


def server_stats(dp, i: int):
    s = ffi.new("mlb_server_stats_t *")
    assert lib.mlb_dp_get_server(dp, i, s) == 0
    return s


def dp_stats(dp):
    st = ffi.new("mlb_dp_stats_t *")
    lib.mlb_dp_get_stats(dp, st)
    return st


def flow_keys(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(1, 2**63, size=n, dtype=np.int64)]


def sed_expected(act: np.ndarray, w: np.ndarray, elig: np.ndarray) -> int:
    """The documented rule: score = (active + 1) * (1 / w) in double over
    eligible servers; the lowest index wins among equal scores."""
    best, bi = float("inf"), -1
    for i in range(len(w)):
        if not elig[i]:
            continue
        s = float(act[i] + 1) * (1.0 / float(w[i]))
        if s < best:
            best, bi = s, i
    return bi


def test_config_check_names_the_field() -> None:
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, 4, 1)
    field = ffi.new("char **")
    assert lib.mlb_dp_config_check(cfg, ffi.cast("const char **", field)) == 0
    for name, bad in [("n_servers", 0), ("n_servers", 257), ("n_workers", 17), ("mode", 0),
                      ("mode", lib.MLB_MODE_COUNT), ("idle_timeout_ns", 0)]:
        lib.mlb_dp_config_default(cfg, 4, 1)
        setattr(cfg, name, bad)
        assert lib.mlb_dp_config_check(cfg, ffi.cast("const char **", field)) == lib.MLB_ERR_ARG
        assert ffi.string(field[0]).decode() == name
        assert lib.mlb_dp_create(cfg) == ffi.NULL


def test_wcmp_frequencies_match_weights_chi_square() -> None:
    w = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 7.5, 0.0, 1.25])
    dp = make_dp(len(w), lib.MLB_MODE_WRANDOM, weights=w, seed=11)
    n = 80_000
    picks = np.array([lib.mlb_dp_select(dp, 0, 0) for _ in range(n)])
    counts = np.bincount(picks, minlength=len(w))
    assert counts[6] == 0                      # zero weight: never
    m = w > 0
    expected = n * w[m] / w[m].sum()
    p = sps.chisquare(counts[m], expected).pvalue
    assert p > 1e-3, (counts, expected)


def test_wcmp_many_servers_and_drain_excluded() -> None:
    rng = np.random.default_rng(5)
    w = rng.uniform(0.1, 3.0, size=64)
    dp = make_dp(64, lib.MLB_MODE_WRANDOM, weights=w, seed=3)
    lib.mlb_dp_set_server(dp, 10, 10, lib.MLB_ADMIN_DRAIN, float(w[10]))
    lib.mlb_dp_set_server(dp, 20, 20, lib.MLB_ADMIN_DOWN, float(w[20]))
    n = 200_000
    counts = np.bincount([lib.mlb_dp_select(dp, 0, 0) for _ in range(n)], minlength=64)
    assert counts[10] == 0 and counts[20] == 0
    m = np.ones(64, bool)
    m[[10, 20]] = False
    p = sps.chisquare(counts[m], n * w[m] / w[m].sum()).pvalue
    assert p > 1e-3


def test_sed_picks_true_argmin_random_weights() -> None:
    rng = np.random.default_rng(7)
    n = 32
    w = rng.uniform(0.5, 4.0, size=n)
    dp = make_dp(n, weights=w)
    elig = np.ones(n, bool)
    live: list[int] = []
    keys = iter(flow_keys(5000, 1))
    t = SEC
    for step in range(3000):
        t += 1000
        if live and rng.random() < 0.45:        # end a random flow
            k = live.pop(int(rng.integers(len(live))))
            lib.mlb_dp_packet(dp, 0, k, t, 60, FIN)
            continue
        exp = sed_expected(active(dp, n), w, elig)
        k = next(keys)
        got = lib.mlb_dp_packet(dp, 0, k, t, 60, lib.MLB_PKT_SYN)
        assert got == exp, step
        live.append(k)
    assert active(dp, n).sum() == len(live)


def test_sed_tie_break_is_lowest_index() -> None:
    # equal weights, nothing active: 0, 1, 2, 3, then 0 again (all at 1 active)
    dp = make_dp(4, weights=[1, 1, 1, 1])
    got = [lib.mlb_dp_packet(dp, 0, k, SEC, 60, 0) for k in flow_keys(9, 2)]
    assert got == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    # weights 1,2,2,1: scores (a+1)/w; exact ties (powers of two) go low
    dp = make_dp(4, weights=[1, 2, 2, 1])
    got = [lib.mlb_dp_packet(dp, 0, k, SEC, 60, 0) for k in flow_keys(6, 3)]
    # a=0: 1, .5, .5, 1 -> 1; a1=1: .5 vs 1 -> 2; then 1(1.0) 2(1.0) 0(1) 3(1) -> 0
    assert got == [1, 2, 0, 1, 2, 3]


def test_lsq_picks_least_active_ignoring_weights() -> None:
    rng = np.random.default_rng(9)
    n = 16
    dp = make_dp(n, lib.MLB_MODE_LEAST_ACTIVE, weights=rng.uniform(0.5, 5, n))
    live: list[int] = []
    keys = iter(flow_keys(3000, 4))
    for _ in range(2000):
        if live and rng.random() < 0.4:
            lib.mlb_dp_packet(dp, 0, live.pop(int(rng.integers(len(live)))), SEC, 1, FIN)
            continue
        a = active(dp, n)
        k = next(keys)
        got = lib.mlb_dp_packet(dp, 0, k, SEC, 1, 0)
        assert got == int(np.argmin(a))       # numpy argmin: first (lowest) index
        live.append(k)


def test_p2c_prefers_less_loaded_and_respects_eligibility() -> None:
    n = 8
    dp = make_dp(n, lib.MLB_MODE_P2C, weights=[1] * n, seed=5)
    lib.mlb_dp_set_server(dp, 3, 3, lib.MLB_ADMIN_DOWN, 1.0)
    keys = flow_keys(4000, 5)
    got = [lib.mlb_dp_packet(dp, 0, k, SEC, 1, 0) for k in keys]
    counts = np.bincount(got, minlength=n)
    assert counts[3] == 0
    a = np.delete(active(dp, n), 3)
    assert a.max() - a.min() <= 3               # two choices keep loads tight


def test_drain_keeps_existing_flows_and_takes_no_new() -> None:
    n = 4
    dp = make_dp(n, weights=[1] * n)
    keys = flow_keys(400, 6)
    home = {k: lib.mlb_dp_packet(dp, 0, k, SEC, 100, 0) for k in keys}
    on2 = [k for k, s in home.items() if s == 2]
    assert on2
    lib.mlb_dp_set_server(dp, 2, 2, lib.MLB_ADMIN_DRAIN, 1.0)
    for k in keys:                               # pinned flows stay, incl. on 2
        assert lib.mlb_dp_packet(dp, 0, k, SEC + 1, 100, 0) == home[k]
    new = [lib.mlb_dp_packet(dp, 0, k, SEC + 2, 100, 0) for k in flow_keys(300, 7)]
    assert 2 not in new
    assert lib.mlb_dp_server_active(dp, 2) == len(on2)
    for k in on2:                                # they end normally
        lib.mlb_dp_packet(dp, 0, k, SEC + 3, 100, FIN)
    assert lib.mlb_dp_server_active(dp, 2) == 0
    assert server_stats(dp, 2).completed_flows == len(on2)


def test_down_moves_existing_flows_and_timer_evicts() -> None:
    n = 4
    dp = make_dp(n, weights=[1] * n)
    keys = flow_keys(400, 8)
    home = {k: lib.mlb_dp_packet(dp, 0, k, SEC, 100, 0) for k in keys}
    on1 = [k for k, s in home.items() if s == 1]
    lib.mlb_dp_set_server(dp, 1, 1, lib.MLB_ADMIN_DOWN, 1.0)
    # half of them send a packet: re-homed elsewhere
    for k in on1[: len(on1) // 2]:
        assert lib.mlb_dp_packet(dp, 0, k, SEC + 1, 100, 0) not in (1, -1)
    for k in keys:
        if home[k] != 1:
            assert lib.mlb_dp_packet(dp, 0, k, SEC + 1, 100, 0) == home[k]
    assert lib.mlb_dp_server_active(dp, 1) == len(on1) - len(on1) // 2
    lib.mlb_dp_timer(dp, ffi.NULL, SEC + 2)       # the sweep evicts the rest
    assert lib.mlb_dp_server_active(dp, 1) == 0
    assert dp_stats(dp).down_evictions == len(on1)
    s1 = server_stats(dp, 1)
    assert s1.completed_flows == s1.new_flows == len(on1)
    assert lib.mlb_dp_reservoir(dp, 0, 1, lib.MLB_RES_FCT).n_seen == 0   # no FCT samples


def test_no_eligible_server_returns_no_server() -> None:
    dp = make_dp(2, weights=[1, 1])
    lib.mlb_dp_set_server(dp, 0, 0, lib.MLB_ADMIN_DOWN, 1.0)
    lib.mlb_dp_set_server(dp, 1, 1, lib.MLB_ADMIN_UP, 0.0)
    for mode in range(1, lib.MLB_MODE_COUNT):
        lib.mlb_dp_set_mode(dp, mode)
        assert lib.mlb_dp_packet(dp, 0, 12345, SEC, 1, 0) == lib.MLB_DP_NO_SERVER
    assert dp_stats(dp).flows == 0
    assert lib.mlb_dp_packet(dp, 5, 1, SEC, 1, 0) == lib.MLB_DP_BAD_ARG


@pytest.mark.parametrize("mode", [lib.MLB_MODE_SED, lib.MLB_MODE_WRANDOM, lib.MLB_MODE_P2C,
                                  lib.MLB_MODE_LEAST_ACTIVE, lib.MLB_MODE_HASH])
def test_weight_and_mode_change_never_moves_a_flow(mode: int) -> None:
    n = 8
    dp = make_dp(n, mode, workers=2, weights=[1, 2, 3, 4, 1, 2, 3, 4])
    keys = flow_keys(3000, 10)
    home = {k: lib.mlb_dp_packet(dp, k & 1, k, SEC, 100, 0) for k in keys}
    rng = np.random.default_rng(1)
    for step in range(3):
        for i in range(n):
            lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, float(rng.uniform(0.1, 9)))
        lib.mlb_dp_set_mode(dp, 1 + (mode + step) % (lib.MLB_MODE_COUNT - 1))
        for k in keys:
            assert lib.mlb_dp_packet(dp, k & 1, k, SEC + step + 1, 100, 0) == home[k]
    assert dp_stats(dp).flows == len(keys)
    assert sum(server_stats(dp, i).new_flows for i in range(n)) == len(keys)


def test_fin_ends_flow_once_and_fct_is_recorded_once() -> None:
    dp = make_dp(2, weights=[1, 1])
    keys = flow_keys(50, 11)
    for k in keys:
        lib.mlb_dp_packet(dp, 0, k, SEC, 100, lib.MLB_PKT_SYN)
    for k in keys:
        lib.mlb_dp_packet(dp, 0, k, SEC + SEC // 2, 100, 0)
    for k in keys:
        lib.mlb_dp_packet(dp, 0, k, 3 * SEC, 100, FIN)
    # a retransmitted FIN or RST is a lone packet: no flow, no second sample
    for k in keys:
        lib.mlb_dp_packet(dp, 0, k, 3 * SEC + 5, 100, lib.MLB_PKT_RST)
    assert active(dp, 2).sum() == 0 and dp_stats(dp).flows == 0
    fct = [lib.mlb_dp_reservoir(dp, 0, i, lib.MLB_RES_FCT) for i in range(2)]
    assert sum(r.n_seen for r in fct) == len(keys)
    vals = [r.s[j].value for r in fct for j in range(r.count)]
    assert np.allclose(vals, 2.0)
    st = [server_stats(dp, i) for i in range(2)]
    assert sum(s.new_flows for s in st) == sum(s.completed_flows for s in st) == len(keys)
    assert sum(s.packets for s in st) == 4 * len(keys)
    assert sum(s.bytes for s in st) == 400 * len(keys)


def test_idle_timeout_frees_entries_and_active_returns_to_zero() -> None:
    n = 4
    dp = make_dp(n, workers=2, capacity=4096, idle_s=10.0, weights=[1] * n)
    keys = flow_keys(1500, 12)
    for k in keys:
        lib.mlb_dp_packet(dp, k & 1, k, SEC, 100, 0)
    fin = keys[:500]
    for k in fin:
        lib.mlb_dp_packet(dp, k & 1, k, 2 * SEC, 100, FIN)
    busy = keys[500:700]                         # still sending at t=8 s
    for k in busy:
        lib.mlb_dp_packet(dp, k & 1, k, 8 * SEC, 100, 0)
    lib.mlb_dp_timer(dp, ffi.NULL, 11 * SEC)     # idle >= 10 s: keys[700:] end
    assert dp_stats(dp).flows == len(busy)
    assert active(dp, n).sum() == len(busy)
    lib.mlb_dp_timer(dp, ffi.NULL, 18 * SEC)
    assert dp_stats(dp).flows == 0
    assert active(dp, n).sum() == 0
    st = [server_stats(dp, i) for i in range(n)]
    assert sum(s.timeouts for s in st) == len(keys) - len(fin)
    assert sum(s.completed_flows for s in st) == sum(s.new_flows for s in st) == len(keys)
    fct_seen = sum(lib.mlb_dp_reservoir(dp, w, i, lib.MLB_RES_FCT).n_seen
                   for w in range(2) for i in range(n))
    assert fct_seen == len(keys)                 # every flow's FCT exactly once
    # the freed entries are reusable: the table takes a new full load
    for k in flow_keys(1500, 13):
        lib.mlb_dp_packet(dp, k & 1, k, 20 * SEC, 100, 0)
    assert dp_stats(dp).untracked_flows == 0


def test_packet_after_idle_timeout_starts_a_new_flow() -> None:
    dp = make_dp(2, idle_s=5.0, weights=[1, 1])
    lib.mlb_dp_packet(dp, 0, 99, SEC, 1, 0)
    lib.mlb_dp_packet(dp, 0, 99, 10 * SEC, 1, 0)      # no timer ran in between
    st = [server_stats(dp, i) for i in range(2)]
    assert sum(s.new_flows for s in st) == 2
    assert sum(s.timeouts for s in st) == 1
    assert active(dp, 2).sum() == 1


def test_full_table_is_counted_untracked_not_a_crash() -> None:
    dp = make_dp(2, capacity=64, weights=[1, 1])
    keys = flow_keys(500, 14)
    got = [lib.mlb_dp_packet(dp, 0, k, SEC, 1, 0) for k in keys]
    assert all(g in (0, 1) for g in got)
    st = dp_stats(dp)
    assert st.flow_capacity == 64
    assert st.flows <= 64
    assert st.flows + st.untracked_flows == len(keys)
    assert active(dp, 2).sum() == st.flows


def test_maglev_balance_and_removal_moves_about_one_nth() -> None:
    n = 20
    dp = make_dp(n, lib.MLB_MODE_HASH, weights=[1] * n)
    m = dp_stats(dp).maglev_size
    assert m >= 100 * n and all(m % d for d in range(2, int(m**0.5) + 1))
    keys = flow_keys(100_000, 15)
    before = np.array([lib.mlb_dp_hash_lookup(dp, k) for k in keys])
    share = np.bincount(before, minlength=n) / len(keys)
    assert np.all(np.abs(share * n - 1) < 0.15)
    lib.mlb_dp_set_server(dp, 7, 7, lib.MLB_ADMIN_DOWN, 1.0)
    after = np.array([lib.mlb_dp_hash_lookup(dp, k) for k in keys])
    assert not np.any(after == 7)
    moved = np.mean(before != after)
    assert 0.9 / n < moved < 1.5 / n, moved
    # keys not on the removed server mostly stay
    assert np.mean(before[before != 7] != after[before != 7]) < 0.5 / n
    # select() in HASH mode is the table lookup
    assert all(lib.mlb_dp_select(dp, 0, k) == a for k, a in zip(keys[:200], after[:200],
                                                                    strict=True))


def test_maglev_is_the_same_on_every_instance() -> None:
    a = make_dp(10, lib.MLB_MODE_HASH, seed=1)
    b = make_dp(10, lib.MLB_MODE_HASH, seed=2)     # other LB, other seed
    keys = flow_keys(2000, 16)
    assert [lib.mlb_dp_hash_lookup(a, k) for k in keys] == \
        [lib.mlb_dp_hash_lookup(b, k) for k in keys]


def test_maglev_follows_server_ids_not_indexes() -> None:
    a = make_dp(5, lib.MLB_MODE_HASH)
    b = make_dp(5, lib.MLB_MODE_HASH)
    keys = flow_keys(5000, 17)
    lib.mlb_dp_set_server(b, 2, 42, lib.MLB_ADMIN_UP, 1.0)      # another server at index 2
    la = np.array([lib.mlb_dp_hash_lookup(a, k) for k in keys])
    lb = np.array([lib.mlb_dp_hash_lookup(b, k) for k in keys])
    assert np.any(la != lb)
    lib.mlb_dp_set_server(a, 2, 42, lib.MLB_ADMIN_UP, 1.0)
    assert [lib.mlb_dp_hash_lookup(a, k) for k in keys] == lb.tolist()


@pytest.mark.parametrize("mode", range(1, lib.MLB_MODE_COUNT))
def test_random_event_mix_keeps_counters_consistent(mode: int) -> None:
    n, workers = 6, 3
    dp = make_dp(n, mode, workers=workers, capacity=256, idle_s=2.0, seed=mode)
    rng = np.random.default_rng(100 + mode)
    home: dict[int, int] = {}
    last: dict[int, int] = {}
    t = SEC
    pool = flow_keys(600, 18)
    for _ in range(6000):
        t += int(rng.integers(0, 5 * 10**6))
        r = rng.random()
        if r < 0.01:
            i = int(rng.integers(n))
            lib.mlb_dp_set_server(dp, i, i, int(rng.integers(3)), float(rng.uniform(0, 3)))
            continue
        if r < 0.02:
            lib.mlb_dp_timer(dp, ffi.NULL, t)
            home = {k: s for k, s in home.items()
                    if lib.mlb_dp_flow_server(dp, k % workers, k) == s}
            continue
        k = pool[int(rng.integers(len(pool)))]
        flags = FIN if rng.random() < 0.2 else 0
        s = lib.mlb_dp_packet(dp, k % workers, k, t, 10, flags)
        pinned = k in home and t - last[k] < 2 * SEC
        if pinned and s >= 0:
            st = server_stats(dp, home[k])
            if st.admin_state != lib.MLB_ADMIN_DOWN:
                assert s == home[k]                  # affinity
        # only an open entry is pinned for good: a closed one (after FIN) may
        # give its slot to a new flow when its bucket is full
        if s >= 0 and not flags and lib.mlb_dp_flow_server(dp, k % workers, k) == s \
                and lib.mlb_dp_flow_state(dp, k % workers, k) == lib.MLB_DP_FLOW_OPEN:
            if k not in home or not pinned or home[k] != s:
                home[k] = s
            last[k] = t
        else:
            home.pop(k, None)
    st = dp_stats(dp)
    per = [server_stats(dp, i) for i in range(n)]
    assert sum(p.active_flows for p in per) == st.flows
    assert sum(p.new_flows for p in per) == \
        sum(p.completed_flows + p.active_flows for p in per) + st.untracked_flows
    fct = sum(lib.mlb_dp_reservoir(dp, w, i, lib.MLB_RES_FCT).n_seen
              for w in range(workers) for i in range(n))
    assert fct == sum(p.completed_flows for p in per) - st.down_evictions
    lib.mlb_dp_timer(dp, ffi.NULL, t + 3 * SEC)      # everything idles out
    assert dp_stats(dp).flows == 0 and active(dp, n).sum() == 0


def test_wcmp_extreme_weights_keep_their_ratio() -> None:
    dp = make_dp(3, lib.MLB_MODE_WRANDOM, weights=[1e300, 3e300, 0], seed=21)
    counts = np.bincount([lib.mlb_dp_select(dp, 0, 0) for _ in range(40_000)], minlength=3)
    assert counts[2] == 0
    assert sps.chisquare(counts[:2], [10_000, 30_000]).pvalue > 1e-3
