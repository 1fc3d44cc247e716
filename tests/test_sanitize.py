"""Relative weights: normalisation, the ratio bound and its report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marllb.daemon._core import lib
from marllb.daemon.features import Features
from marllb.daemon.policies import POLICIES, Policy, register_policy
from marllb.daemon.sanitize import sanitize, sanitize_weights


def feats(static, admin=None) -> Features:
    f = Features.empty(len(static))
    f.static_weight = np.array(static, dtype=float)
    if admin is not None:
        f.admin_state = np.array(admin, dtype=np.uint32)
    return f


def ratios(w, static):
    m = np.asarray(w) / np.asarray(static, dtype=float)
    return m / m[0]


def test_16x_is_honoured_not_clipped():
    static = [16, 16, 1, 1]
    f = feats(static)
    # a 16-core server asking "16 x 2" next to 1-core servers at 1: ratio 32
    r = sanitize_weights([32, 32, 1, 1], f, 0.1, 10.0)
    assert r.clipped == 0
    np.testing.assert_allclose(r.weights / r.weights[2], [32, 32, 1, 1])
    # a policy asking 16x on one server of equal static weights gets 16x
    r = sanitize_weights([16, 1, 1, 1], feats([1, 1, 1, 1]), 0.1, 10.0)
    assert r.clipped == 0 and r.asked_ratio == pytest.approx(16)
    np.testing.assert_allclose(r.weights / r.weights[1], [16, 1, 1, 1])


def test_doubling_everything_changes_nothing():
    f = feats([1, 2, 4])
    a = sanitize([1, 2, 4], f, 0.1, 10)
    b = sanitize([2, 4, 8], f, 0.1, 10)
    np.testing.assert_allclose(a / a[0], b / b[0])
    np.testing.assert_allclose(a, [1, 2, 4])     # in bounds: published as asked
    # 100x everything is scaled back into the bounds, ratios kept
    c = sanitize_weights([100, 200, 400], f, 0.1, 10)
    assert c.clipped == 0
    np.testing.assert_allclose(c.weights, [10, 20, 40])


def test_ratio_bound_clips_and_reports():
    f = feats([1, 1, 1])
    r = sanitize_weights([1000, 1, 1], f, 0.1, 10.0)   # asks 1000x, bound is 100x
    assert r.clipped >= 1 and r.asked_ratio == pytest.approx(1000)
    m = r.weights / 1.0
    assert m.max() / m.min() == pytest.approx(100.0)
    assert np.all(m >= 0.1 - 1e-12) and np.all(m <= 10.0 + 1e-12)
    # equal weights on unequal static weights: multipliers 1, 1/2, 1/4, in bounds
    r = sanitize_weights([1, 1, 1], feats([1, 2, 4]), 0.1, 10.0)
    assert r.clipped == 0
    np.testing.assert_allclose(r.weights / r.weights[0], [1, 1, 1])


def test_never_all_zero_and_zero_means_lower_bound():
    f = feats([1, 1, 1])
    r = sanitize_weights([0, 0, 0], f, 0.1, 10.0)
    assert np.all(r.weights > 0) and r.clipped == 3
    r = sanitize_weights([0, 1, 1], f, 0.1, 10.0)
    assert r.weights[0] == pytest.approx(0.1 * r.weights[1] / 1.0, rel=1e-9) or \
        r.weights[0] / r.weights[1] == pytest.approx(0.1)
    f2 = feats([1.0, 1.0], admin=[lib.MLB_ADMIN_DRAIN] * 2)
    np.testing.assert_array_equal(sanitize([0.0, 0.0], f2, 0.5, 2.0), [0.5, 0.5])


def test_drained_and_down_servers():
    f = feats([1, 2, 4, 1], admin=[0, 0, lib.MLB_ADMIN_DRAIN, lib.MLB_ADMIN_DOWN])
    w = sanitize([math.nan, 2.0, 5.0, 1e9], f, 0.1, 10.0)
    assert np.all(np.isfinite(w))
    assert w[0] == pytest.approx(1.0) and w[1] == pytest.approx(2.0)
    assert w[2] == pytest.approx(5.0)             # drained: kept, same scale
    assert w[3] == pytest.approx(10.0)            # bounded by w_max x static
    # drained servers do not count in the normalisation of the up ones
    w = sanitize([1.0, 1.0, 1e6, 0.0], f, 0.1, 10.0)
    assert w[0] / 1 == pytest.approx(w[1] / 1)


def test_garbage_and_bad_bounds():
    f = feats([1, 2, 4])
    np.testing.assert_allclose(sanitize([1.0], f, 0.1, 10), [1, 2, 4])
    np.testing.assert_allclose(sanitize("x", f, 0.1, 10), [1, 2, 4])
    r = sanitize_weights([math.inf, 1.0, 4.0], f, 0.1, 10)
    assert r.replaced == 1 and np.all(np.isfinite(r.weights))
    with pytest.raises(ValueError):
        sanitize([1.0], feats([1.0]), 0.0, 1.0)


def test_static_zero_server_gets_a_ratio():
    f = feats([0.0, 2.0, 2.0])
    w = sanitize([1.0, 1.0, 1.0], f, 0.1, 10)
    assert np.all(w > 0)
    np.testing.assert_allclose(w, w[0])


class _Asks(Policy):
    """Asks fixed multipliers over static (set per test)."""

    mode = lib.MLB_MODE_SED
    ask = np.ones(3)

    def act(self, features):
        return np.asarray(features.static_weight) * self.ask


def _daemon_on_sim_lb(ask):
    from marllb.sim.lb import SimDaemon, SimLB

    register_policy("_test_asks")(_Asks)
    _Asks.ask = np.asarray(ask, dtype=float)
    lb = SimLB(n_servers=3, n_workers=1, static_weights=[4.0, 2.0, 1.0],
               mode=lib.MLB_MODE_SED, seed=1, publish_interval_ns=10**8)
    d = SimDaemon(lb, "_test_asks", ttl_ns=10**10, seed=1)
    return lb, d


@pytest.fixture
def asks():
    yield _daemon_on_sim_lb
    POLICIES.pop("_test_asks", None)


def test_pipeline_publishes_16x_and_reports_the_bound(asks):
    lb, d = asks([16.0, 1.0, 1.0])
    now = 10**9
    for k in range(3):
        lb.timer(now + k * 10**8)
        d.tick()
    lb.timer(now + 4 * 10**8)               # apply msg_in
    w = lb.weights()
    # the 4-core server asked 16x its static: 64 vs 2 and 1 in force
    np.testing.assert_allclose(w / w[2], [64.0, 2.0, 1.0])
    assert d.last.clipped == 0 and d.pipeline.clipped_ticks == 0
    _Asks.ask = np.array([1000.0, 1.0, 1.0])   # beyond w_max / w_min = 100
    lb.timer(now + 5 * 10**8)
    d.tick()
    assert d.last.clipped >= 1 and d.pipeline.clipped_ticks == 1
    m = d.last.weights / np.array([4.0, 2.0, 1.0])
    assert m.max() / m.min() == pytest.approx(100.0)


def test_fast_path_agrees_with_general_path():
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        static = rng.uniform(0.5, 16, n)
        w = static * np.exp(rng.uniform(np.log(0.1), np.log(10), n))
        fast = sanitize_weights(w, feats(static), 0.1, 10.0)       # all up, in bounds
        admin = np.zeros(n + 1, dtype=np.uint32)
        admin[-1] = lib.MLB_ADMIN_DRAIN                               # forces the general path
        slow = sanitize_weights(np.r_[w, 1.0], feats(np.r_[static, 1.0], admin), 0.1, 10.0)
        np.testing.assert_allclose(fast.weights, slow.weights[:-1], rtol=1e-9)
        assert fast.clipped == slow.clipped == 0
        assert fast.asked_ratio == pytest.approx(slow.asked_ratio)
