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


def reference_stats(v: np.ndarray, t: np.ndarray, now: int, decay: float) -> list[float]:
    age = np.maximum(now - t.astype(np.int64), 0) / 1e9
    w = decay ** age
    order = np.argsort(v, kind="stable")
    cw = np.cumsum(w[order])
    dp90 = v[order][np.searchsorted(cw, 0.9 * w.sum())]
    return [v.mean(), v.std(), np.percentile(v, 90), (w * v).sum() / w.sum(), dp90]


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
    t = np.array([s.r.s[i].t_ns for i in range(live)], dtype=np.uint64)
    out = ffi.new("mlb_stats_t *")
    lib.mlb_reservoir_stats(ffi.addressof(s.r), now, 0.9, out)
    assert out.count == live
    got = [out.mean, out.std, out.p90, out.dmean, out.dp90]
    np.testing.assert_allclose(got, reference_stats(v, t, now, 0.9), rtol=1e-9)


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
