"""Features from a real region written by the fake data plane."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marllb.daemon._core import ffi, lib
from marllb.daemon.features import FEATURE_NAMES, FeatureExtractor, observation_matrix
from tests.fakedp import FakeDataPlane, unique_name


@pytest.fixture
def dp():
    d = FakeDataPlane.create(unique_name("feat"), n_servers=4, n_workers=2)
    yield d
    d.close()


def _view(dp):
    view = ffi.new("mlb_out_view_t *")
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_rng_seed(rng, 7)
    dp.region.snapshot_view(view, rng)
    return view


def test_basic_features(dp):
    fx = FeatureExtractor()
    t0 = dp.publish(active=[1, 2, 3, 4], new_flows=[0, 0, 0, 0],
                    static_weight=[1, 2, 3, 4], fct={0: [0.1, 0.2, 0.3], 2: [1.0]})
    f = fx.update(_view(dp))
    assert f.n == 4 and f.t_ns == t0 and f.dp_gen == dp.generation and f.frame_no == 1
    np.testing.assert_array_equal(f.active, [1, 2, 3, 4])
    np.testing.assert_array_equal(f.static_weight, [1, 2, 3, 4])
    np.testing.assert_array_equal(f.new_flow_rate, 0)  # no previous frame
    assert f.fct.shape == (4, 5) and f.age.shape == (4, 5)
    np.testing.assert_array_equal(f.fct_count, [3, 0, 1, 0])
    assert f.fct[0, 0] == pytest.approx(0.2)                     # mean
    assert f.fct[0, 1] == pytest.approx(np.percentile([0.1, 0.2, 0.3], 90))
    assert f.fct[0, 2] == pytest.approx(np.std([0.1, 0.2, 0.3]))
    assert f.fct[0, 3] == pytest.approx(0.2)                     # same-age samples
    np.testing.assert_array_equal(f.fct[1], 0)                   # empty -> 0, count 0
    # second frame 0.5 s later: rates per second of data-plane time
    dp.publish(t_ns=t0 + 500_000_000, new_flows=[5, 10, 0, 50])
    f2 = fx.update(_view(dp))
    np.testing.assert_allclose(f2.new_flow_rate, [10, 20, 0, 100])
    obs = observation_matrix(f2)
    assert obs.shape == (4, len(FEATURE_NAMES)) and obs.dtype == np.float32
    assert obs[3, FEATURE_NAMES.index("new_flow_rate")] == 100


def test_counter_going_back_and_restart(dp):
    fx = FeatureExtractor()
    t0 = dp.publish(new_flows=[100, 100, 100, 100])
    fx.update(_view(dp))
    dp.publish(t_ns=t0 + 10**9, new_flows=[50, 200, 100, 100])
    f = fx.update(_view(dp))
    np.testing.assert_allclose(f.new_flow_rate, [0, 100, 0, 0])
    # same frame read again: rate kept, not divided by zero
    f = fx.update(_view(dp))
    np.testing.assert_allclose(f.new_flow_rate, [0, 100, 0, 0])


def test_garbage_is_sanitised(dp):
    fx = FeatureExtractor()
    big = 2**64 - 1
    t0 = dp.publish(active=[big, 0, 5, 1], new_flows=[0, 0, 0, 0],
                    static_weight=[math.nan, -3.0, math.inf, 1e300],
                    fct={0: [math.nan, 1.0], 1: [-5.0, -1.0], 2: [math.inf], 3: [1e308, 1e308]},
                    age={0: [math.nan]})
    fx.update(_view(dp))
    dp.publish(t_ns=t0 + 1, new_flows=[big, 0, 0, 0], admin=[0, 1, 2, 77])
    f = fx.update(_view(dp))
    for arr in (f.active, f.new_flow_rate, f.static_weight, f.weight, f.fct, f.age):
        assert np.all(np.isfinite(arr)) and np.all(arr >= 0)
    assert f.active[0] <= 1e12 and f.new_flow_rate[0] <= 1e9
    assert np.all(f.fct <= 1e6)
    assert f.admin_state[3] == lib.MLB_ADMIN_DOWN  # unknown admin state -> down
    assert np.all(np.isfinite(observation_matrix(f)))
    assert f.sanitized > 0


def test_clean_frame_counts_no_garbage(dp):
    fx = FeatureExtractor()
    dp.publish(active=[1, 2, 3, 4], static_weight=[1, 2, 3, 4], fct={0: [0.1, 0.2]})
    assert fx.update(_view(dp)).sanitized == 0


def test_garbage_server_count(dp):
    fx = FeatureExtractor()
    dp.publish(n_servers_field=100000)
    f = fx.update(_view(dp))
    assert f.n <= lib.MLB_MAX_SERVERS


def test_reused_and_alternating_views_read_their_own_frame(dp):
    """The extractor keeps numpy views of the last view object: a reused view
    must show its new contents, another view its own."""
    fx = FeatureExtractor()
    a, b = ffi.new("mlb_out_view_t *"), ffi.new("mlb_out_view_t *")
    rng = ffi.new("mlb_rng_t *")
    dp.publish(active=[1, 2, 3, 4])
    dp.region.snapshot_view(a, rng)
    np.testing.assert_array_equal(fx.update(a).active, [1, 2, 3, 4])
    dp.publish(active=[9, 9, 9, 9], fct={1: [0.5]})
    dp.region.snapshot_view(a, rng)                  # same view object, new frame
    f = fx.update(a)
    np.testing.assert_array_equal(f.active, [9, 9, 9, 9])
    assert f.frame_no == 2 and f.fct[1, 0] == pytest.approx(0.5)
    dp.publish(active=[5, 6, 7, 8])
    dp.region.snapshot_view(b, rng)
    assert fx.update(b).active.tolist() == [5, 6, 7, 8]
    assert fx.update(a).active.tolist() == [9, 9, 9, 9]     # back to the older view
    a[0].meta.n_servers = 2                           # a shorter server table in place
    assert fx.update(a).n == 2
