"""Adaptive baselines: wrr_latency, prequal, p2c (fake features, no data plane)."""

from __future__ import annotations

import numpy as np
import pytest

from marllb.daemon._core import lib
from marllb.daemon.features import Features
from marllb.daemon.policies import make_policy

TICK_NS = 250_000_000


def frame(k: int, fct, active=None, static=None, count=64, rate=10.0) -> Features:
    """Tick k of a fake cluster: per-server recent FCT (s) and active flows."""
    fct = np.asarray(fct, dtype=float)
    n = fct.shape[0]
    f = Features.empty(n)
    f.t_ns = 10**9 + k * TICK_NS
    f.frame_no = k + 1
    f.static_weight = np.ones(n) if static is None else np.asarray(static, float)
    f.active = np.zeros(n) if active is None else np.asarray(active, float)
    f.new_flow_rate = np.full(n, rate)
    f.fct = np.repeat(fct[:, None], 5, axis=1)
    f.fct_count = np.full(n, count, dtype=np.int64)
    return f


def closed_loop_fct(w, cap, total=8.0):
    """Fake cluster: flows split by weight; recent FCT grows with load / capacity."""
    share = np.asarray(w) / np.sum(w)
    return 0.05 + 0.1 * share * total / np.asarray(cap)


def test_wrr_latency_raises_fast_lowers_slow_within_n_ticks():
    p = make_policy("wrr_latency")
    assert p.mode == lib.MLB_MODE_SED
    p.reset(4)
    cap = [3.0, 1.0, 1.0, 0.5]        # server 0 3x faster, server 3 slowed to half
    w = p.act(frame(0, closed_loop_fct(np.ones(4), cap)))
    np.testing.assert_allclose(w, 1.0)           # blackout: nothing trusted yet
    for k in range(1, 161):                      # 40 s of 250 ms ticks
        w = p.act(frame(k, closed_loop_fct(w, cap)))
    assert w[0] > 1.5 * w[1] and w[3] < 0.75 * w[1], w
    assert w[1] == pytest.approx(w[2])
    start = closed_loop_fct(np.ones(4), cap)
    fct = closed_loop_fct(w, cap)
    # recent FCTs driven towards equal (the anti-windup leak leaves some gap)
    assert fct.max() / fct.min() < 0.6 * start.max() / start.min()


def test_wrr_latency_blackout_and_expiry():
    p = make_policy("wrr_latency")
    p.reset(2)
    fct = [0.1, 0.4]
    ticks_blackout = int(p.BLACKOUT_S * 1e9 / TICK_NS)
    for k in range(ticks_blackout):
        w = p.act(frame(k, fct))
    np.testing.assert_allclose(w, 1.0)           # still in blackout
    for k in range(ticks_blackout, ticks_blackout + 40):
        w = p.act(frame(k, fct))
    assert w[0] > 1.5 * w[1]
    # too few samples: untrusted, the multipliers relax back towards 1
    for k in range(60, 140):
        w = p.act(frame(k, fct, count=2))
    assert w[0] / w[1] < 1.1


def test_wrr_latency_static_kept_when_fcts_equal():
    p = make_policy("wrr_latency")
    p.reset(3)
    for k in range(20):
        w = p.act(frame(k, [0.2, 0.2, 0.2], static=[1, 2, 4]))
    np.testing.assert_allclose(w / w[0], [1, 2, 4], rtol=1e-6)


def test_prequal_hot_cold_rule():
    p = make_policy("prequal")
    assert p.mode == lib.MLB_MODE_SED
    p.reset(5)
    # server 4 has far more flows in flight per weight: hot.  Among the cold
    # ones, the lowest latency gets the largest weight.
    f = frame(0, [0.1, 0.2, 0.4, 0.2, 0.05], active=[2, 2, 2, 2, 40])
    w = p.act(f)
    assert p.hot.tolist() == [False, False, False, False, True]
    assert w[4] < w[2] < w[1] < w[0]             # hot lowest although its latency is best
    assert w[1] == pytest.approx(w[3])
    # RIF is per unit of static weight: a 10x server with 10x flows is not hot
    f = frame(1, [0.2] * 4, active=[1, 1, 1, 10], static=[1, 1, 1, 10])
    p.act(f)
    assert not p.hot[3]


def test_p2c_policy_mode():
    p = make_policy("p2c")
    assert p.mode == lib.MLB_MODE_P2C
    p.reset(3)
    f = frame(0, [0.1] * 3, static=[1, 2, 4])
    np.testing.assert_array_equal(p.act(f), [1, 2, 4])


@pytest.mark.parametrize("name", ["wrr_latency", "prequal"])
def test_adaptive_survives_new_table_and_drained(name):
    p = make_policy(name)
    p.reset(3)
    for k in range(10):
        p.act(frame(k, [0.1, 0.2, 0.3]))
    f = frame(10, [0.1, 0.2, 0.3, 0.0, 0.5])       # server count changed
    f.admin_state = np.array([0, 0, lib.MLB_ADMIN_DRAIN, 0, 0], dtype=np.uint32)
    w = p.act(f)
    assert w.shape == (5,) and np.all(np.isfinite(w)) and np.all(w > 0)
    empty = Features.empty(0)
    assert p.act(empty).shape == (0,)
