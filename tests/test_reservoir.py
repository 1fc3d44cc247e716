"""Reservoir sampler: uniformity, merge uniformity over the union, and stats
equal to numpy's over the live slots."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from marllb.daemon._core import ffi, lib

K = lib.MLB_RESERVOIR_K


def new_sampler(seed: int):
    s = ffi.new("mlb_sampler_t *")
    lib.mlb_sampler_init(s, seed)
    return s


def values_of(r) -> np.ndarray:
    return np.array([r.s[i].value for i in range(r.count)])


def f64(a: np.ndarray):
    return ffi.from_buffer("double[]", a)


def u64(a: np.ndarray):
    return ffi.from_buffer("uint64_t[]", a)


@pytest.mark.parametrize("batch", [False, True])
def test_reservoir_is_uniform_chi_square(batch: bool) -> None:
    n, trials = 1000, 2000
    items = np.arange(n, dtype=np.float64)
    counts = np.zeros(n)
    for t in range(trials):
        s = new_sampler(t + 1)
        if batch:  # split in uneven batches so the skip logic crosses batches
            for chunk in np.array_split(items, [7, 200, 513]):
                lib.mlb_sampler_add_batch(s, f64(chunk), ffi.NULL, 0, len(chunk))
        else:
            for x in items:
                lib.mlb_sampler_add(s, 0, x)
        assert s.r.n_seen == n and s.r.count == K
        v = values_of(s.r).astype(int)
        assert len(set(v)) == K  # without replacement
        counts[v] += 1
    expected = np.full(n, trials * K / n)
    _, p = sps.chisquare(counts, expected)
    assert p > 1e-3, p


def test_not_full_reservoir_holds_everything() -> None:
    s = new_sampler(3)
    for x in range(50):
        lib.mlb_sampler_add(s, x, float(x))
    assert (s.r.n_seen, s.r.count) == (50, 50)
    assert sorted(values_of(s.r)) == list(range(50))


def test_forget_keeps_samples_and_favours_new_items() -> None:
    s = new_sampler(5)
    lib.mlb_sampler_add_batch(s, f64(np.zeros(10_000)), ffi.NULL, 0, 10_000)
    lib.mlb_sampler_forget(s)
    assert (s.r.n_seen, s.r.count) == (K, K)
    lib.mlb_sampler_add_batch(s, f64(np.ones(K)), ffi.NULL, 0, K)
    frac_new = values_of(s.r).mean()
    # without forget, K new items among 10,128 would be ~1% of the sample;
    # after it each enters with probability K/(K+j): about half the slots
    assert 0.3 < frac_new < 0.7


def test_merge_is_uniform_over_the_union() -> None:
    sizes = [300, 1000, 50, 0]
    offsets = np.cumsum([0] + sizes)
    total, trials = sum(sizes), 3000
    counts = np.zeros(total)
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_rng_seed(rng, 99)
    for t in range(trials):
        samplers = []
        for i, n in enumerate(sizes):
            s = new_sampler(1000 * t + i + 1)
            items = np.arange(offsets[i], offsets[i] + n, dtype=np.float64)
            lib.mlb_sampler_add_batch(s, f64(items), ffi.NULL, 0, n)
            samplers.append(s)
        src = ffi.new("mlb_reservoir_t *[]", [ffi.addressof(s.r) for s in samplers])
        dst = ffi.new("mlb_reservoir_t *")
        assert lib.mlb_reservoir_merge(src, len(sizes), dst, rng) == lib.MLB_OK
        assert dst.n_seen == total and dst.count == K
        v = values_of(dst).astype(int)
        assert len(set(v)) == K
        counts[v] += 1
    _, p = sps.chisquare(counts, np.full(total, trials * K / total))
    assert p > 1e-3, p
    # and per source, the share follows n_seen
    share = [counts[offsets[i]:offsets[i + 1]].sum() / (trials * K) for i in range(3)]
    assert np.allclose(share, np.array(sizes[:3]) / total, atol=0.01)


def test_merge_of_full_reservoirs_takes_every_slot_equally_often() -> None:
    """Full sources (the affine-permutation path): slot j of source i holds
    item 128 i + j in fill order, the least exchangeable layout there is."""
    samplers = [new_sampler(i + 1) for i in range(4)]
    for i, s in enumerate(samplers):
        lib.mlb_sampler_add_batch(s, f64(np.arange(i * K, (i + 1) * K, dtype=np.float64)),
                                  ffi.NULL, 0, K)
    src = ffi.new("mlb_reservoir_t *[]", [ffi.addressof(s.r) for s in samplers])
    dst = ffi.new("mlb_reservoir_t *")
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_rng_seed(rng, 5)
    trials = 4000
    counts = np.zeros(4 * K)
    subsets = set()
    for _ in range(trials):
        assert lib.mlb_reservoir_merge(src, 4, dst, rng) == lib.MLB_OK
        v = values_of(dst).astype(int)
        assert dst.count == K and len(set(v)) == K            # without replacement
        counts[v] += 1
        subsets.add(tuple(sorted(v[v < K])))
    # each slot with probability 1/4: binomial(4000, 1/4) -> mean 1000, sd 27
    assert np.all(np.abs(counts - trials / 4) < 6 * np.sqrt(trials * 3 / 16))
    assert len(subsets) > 1000                 # not a few fixed blocks


def test_merge_of_small_reservoirs_keeps_all() -> None:
    samplers = [new_sampler(i + 1) for i in range(3)]
    for i, s in enumerate(samplers):
        lib.mlb_sampler_add_batch(s, f64(np.full(10, float(i))), ffi.NULL, 0, 10)
    src = ffi.new("mlb_reservoir_t *[]", [ffi.addressof(s.r) for s in samplers])
    dst = ffi.new("mlb_reservoir_t *")
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_reservoir_merge(src, 3, dst, rng)
    assert (dst.count, dst.n_seen) == (30, 30)
    assert sorted(values_of(dst)) == [0.0] * 10 + [1.0] * 10 + [2.0] * 10


def test_merge_survives_garbage_counts() -> None:
    bad = ffi.new("mlb_reservoir_t *")
    bad.count = 10_000  # corrupt: more live slots than K
    bad.n_seen = 3
    ok = new_sampler(1)
    lib.mlb_sampler_add(ok, 0, 1.0)
    src = ffi.new("mlb_reservoir_t *[]", [bad, ffi.addressof(ok.r)])
    dst = ffi.new("mlb_reservoir_t *")
    rng = ffi.new("mlb_rng_t *")
    assert lib.mlb_reservoir_merge(src, 2, dst, rng) == lib.MLB_OK
    assert dst.count <= K
    assert lib.mlb_reservoir_merge(src, 17, dst, rng) == lib.MLB_ERR_ARG


SHIFT = lib.MLB_SAMPLE_T_SHIFT
UNIT_S = 2**SHIFT * 1e-9


def stamp(t_ns: int) -> int:
    """A sample's stored time stamp (mlb_shm.h: t_ns >> SHIFT, modulo 2^32)."""
    return (int(t_ns) >> SHIFT) & 0xFFFFFFFF


def stamp_ages_s(t: np.ndarray, now: int) -> np.ndarray:
    """Ages as the C side sees them: signed 32-bit stamp difference, >= 0."""
    d = ((stamp(now) - t.astype(np.int64)) + 2**31) % 2**32 - 2**31
    return np.maximum(d, 0) * UNIT_S


def reference_stats(v: np.ndarray, age_s: np.ndarray, decay: float) -> list[float]:
    w = decay ** age_s
    order = np.argsort(v, kind="stable")
    cw = np.cumsum(w[order])
    dp90 = v[order][np.searchsorted(cw, 0.9 * w.sum())]
    return [v.mean(), v.std(), np.percentile(v, 90), (w * v).sum() / w.sum(), dp90]


def stats_of(r, now: int, decay: float = 0.9) -> list[float]:
    out = ffi.new("mlb_stats_t *")
    lib.mlb_reservoir_stats(r, now, decay, out)
    return [out.mean, out.std, out.p90, out.dmean, out.dp90]


@pytest.mark.parametrize("n", [1, 2, 5, 77, 128, 5000])
def test_stats_equal_numpy_over_live_slots(n: int) -> None:
    rng = np.random.default_rng(n)
    vals = rng.lognormal(-1.5, 1.0, n)
    now = 50 * 10**9
    ts = (now - rng.uniform(0, 20e9, n)).astype(np.uint64)
    s = new_sampler(7)
    lib.mlb_sampler_add_batch(s, f64(vals), u64(ts), 0, n)
    live = min(n, K)
    v = np.array([s.r.s[i].value for i in range(live)])
    t = np.array([s.r.s[i].t for i in range(live)], dtype=np.uint64)
    out = ffi.new("mlb_stats_t *")
    lib.mlb_reservoir_stats(ffi.addressof(s.r), now, 0.9, out)
    assert out.count == live
    got = [out.mean, out.std, out.p90, out.dmean, out.dp90]
    # exact up to summation order: the decay table is within a few ulp
    np.testing.assert_allclose(got, reference_stats(v, stamp_ages_s(t, now), 0.9), rtol=1e-9)
    # the stamps' 16 us resolution moves the decayed stats by < |ln 0.9| * 16.4 us
    exact_age = np.array([(now - int(ts[np.flatnonzero(np.float32(vals) == x)[0]])) / 1e9
                          for x in v.astype(np.float32)])
    ref = reference_stats(v, exact_age, 0.9)
    assert abs(out.dmean - ref[3]) <= 4e-6 * ref[3]


def reservoir_of(values, t_ns) -> object:
    r = ffi.new("mlb_reservoir_t *")
    for i, (x, t) in enumerate(zip(values, t_ns, strict=True)):
        r.s[i].value = x
        r.s[i].t = stamp(t)
    r.count = r.n_seen = len(values)
    return r


@pytest.mark.parametrize("age_units", [0, 1, 1023, 1024, 5000, 2**20 - 1, 2**20 + 77,
                                       3 * 2**20 + 5, 2**31 - 1])
@pytest.mark.parametrize("decay", [0.9, 0.9999, 1.0])
def test_decay_weight_is_exact_to_a_few_ulp(age_units: int, decay: float) -> None:
    # two samples, values 0 and 1: dmean = w(age) / (1 + w(age))
    now = 10**16
    r = reservoir_of([0.0, 1.0], [now, now - age_units * 2**SHIFT])
    w = decay ** (age_units * UNIT_S)
    assert stats_of(r, now, decay)[3] == pytest.approx(w / (1 + w), rel=1e-13, abs=1e-300)


def test_very_old_samples_weigh_next_to_nothing() -> None:
    now = 10**15
    r = reservoir_of([5.0, 1.0], [now, now - 2**26 * 2**SHIFT])   # ~18 min old: 0.9^1100
    assert stats_of(r, now)[3] == 5.0
    r = reservoir_of([5.0, 1.0], [now - 2**27 * 2**SHIFT] * 2)     # both old: equal weights
    assert stats_of(r, now)[3] == pytest.approx(3.0, rel=1e-15)
    r = reservoir_of([5.0, 1.0], [now, now - 2**30 * 2**SHIFT])   # 4.9 h: underflows to 0
    assert stats_of(r, now)[3] == 5.0
    assert stats_of(r, now, 1.0)[3] == 3.0                         # no decay: no age counts


def test_stamps_wrap_and_future_stamps_have_age_zero() -> None:
    wrap = 2**32 * 2**SHIFT                      # ~52 days of data-plane time
    now = 3 * wrap + 2**SHIFT                    # just after a wrap of the stamps
    r = reservoir_of([0.0, 1.0], [now - 2 * 10**9, now])   # 2 s old, across the wrap
    w = 0.9 ** stamp_ages_s(np.array([stamp(now - 2 * 10**9)]), now)[0]
    assert stats_of(r, now)[3] == pytest.approx(1 / (1 + w), rel=1e-12)
    r = reservoir_of([0.0, 1.0], [now + 5 * 10**9, now])    # stamped after now: weight 1
    assert stats_of(r, now)[3] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("case", ["old_tail", "ties", "one_heavy", "all_equal"])
def test_decayed_p90_in_the_hard_cases(case: str) -> None:
    rng = np.random.default_rng(3)
    now = 10**13
    v = rng.lognormal(0, 1, K).astype(np.float32)
    age = rng.uniform(0, 10, K)
    if case == "old_tail":       # the large values are old: the answer lies far below the top
        age = np.where(v > np.quantile(v, 0.5), 300.0, 0.0)
    elif case == "ties":
        v = np.round(v, 1).astype(np.float32)
    elif case == "one_heavy":    # one fresh sample among very old ones
        age = np.full(K, 200.0)
        age[7] = 0.0
    elif case == "all_equal":
        v = np.full(K, 0.25, dtype=np.float32)
    t = (now - age * 1e9).astype(np.int64)
    r = reservoir_of(v.tolist(), t.tolist())
    st = np.array([r.s[i].t for i in range(K)], dtype=np.uint64)
    ref = reference_stats(v.astype(np.float64), stamp_ages_s(st, now), 0.9)
    np.testing.assert_allclose(stats_of(r, now), ref, rtol=1e-9)


def test_sample_is_eight_bytes_float_seconds_and_a_stamp() -> None:
    s = new_sampler(1)
    lib.mlb_sampler_add(s, 5 * 2**SHIFT + 123, 0.1)
    assert ffi.sizeof("mlb_sample_t") == 8
    assert s.r.s[0].t == 5 and s.r.s[0].value == pytest.approx(0.1, rel=1e-7)
    lib.mlb_sampler_add(s, 0, 1e300)             # out of float range: inf, not UB garbage
    lib.mlb_sampler_add(s, 0, float("nan"))
    assert s.r.s[1].value == float("inf") and np.isnan(s.r.s[2].value)


def test_stats_of_empty_reservoir_are_nan() -> None:
    r = ffi.new("mlb_reservoir_t *")
    out = ffi.new("mlb_stats_t *")
    lib.mlb_reservoir_stats(r, 0, 0.9, out)
    assert out.count == 0 and np.isnan([out.mean, out.p90, out.dmean, out.dp90]).all()


def test_stats_many_matches_single() -> None:
    rs = ffi.new("mlb_reservoir_t[3]")
    for i in range(3):
        s = new_sampler(i + 1)
        lib.mlb_sampler_add_batch(s, f64(np.arange(i * 40.0, i * 40 + 60)), ffi.NULL, 5, 60)
        rs[i] = s.r
    many = ffi.new("mlb_stats_t[3]")
    lib.mlb_reservoir_stats_many(rs, 3, 10, 0.9, many)
    one = ffi.new("mlb_stats_t *")
    for i in range(3):
        lib.mlb_reservoir_stats(ffi.addressof(rs[i]), 10, 0.9, one)
        assert (many[i].mean, many[i].p90, many[i].dp90) == (one.mean, one.p90, one.dp90)
