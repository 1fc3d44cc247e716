"""The daemon's in-place inference path equals the reference numpy path.

``InputBuilder`` + ``GruStep`` (preallocated float32 buffers, hidden state
updated in place) against ``agent_inputs(observation_matrix(f))`` and a
float64 GRU written out from torch's GRUCell equations."""

from __future__ import annotations

import numpy as np
import pytest

from marllb.daemon._core import lib
from marllb.daemon.features import Features, observation_matrix
from marllb.daemon.nets import (
    LEVELS,
    PARAM_SHAPES,
    GruStep,
    InputBuilder,
    NumpyAgent,
    agent_inputs,
    input_dim,
)

HIDDEN = 16


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, h, o = input_dim(), HIDDEN, len(LEVELS)
    shapes = {"fc1.weight": (32, d), "fc1.bias": (32,), "gru.weight_ih": (3 * h, 32),
              "gru.weight_hh": (3 * h, h), "gru.bias_ih": (3 * h,), "gru.bias_hh": (3 * h,),
              "head.weight": (o, h), "head.bias": (o,)}
    return {k: rng.normal(0, 0.4, shapes[k]).astype(np.float32) for k in PARAM_SHAPES}


def _reference_step(p: dict[str, np.ndarray], x: np.ndarray, h: np.ndarray):
    """torch.nn.GRUCell's equations in float64."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    e = np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0.0)
    gi = e @ p["gru.weight_ih"].T + p["gru.bias_ih"]
    gh = h @ p["gru.weight_hh"].T + p["gru.bias_hh"]
    H = h.shape[1]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    r, z = sig(gi[:, :H] + gh[:, :H]), sig(gi[:, H:2 * H] + gh[:, H:2 * H])
    c = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    h2 = (1 - z) * c + z * h
    return h2 @ p["head.weight"].T + p["head.bias"], h2


def _features(n: int, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    f = Features.empty(n)
    f.active = rng.integers(0, 100, n).astype(float)
    f.new_flow_rate = rng.exponential(50, n)
    f.fct = rng.exponential(0.3, (n, 5))
    f.age = rng.exponential(0.2, (n, 5))
    f.fct_count = rng.integers(0, 128, n)
    f.age_count = rng.integers(0, 128, n)
    f.static_weight = rng.choice([1.0, 2.0, 4.0], n)
    f.admin_state = np.where(rng.random(n) < 0.2, lib.MLB_ADMIN_DRAIN,
                             lib.MLB_ADMIN_UP).astype(np.uint32)
    return f


@pytest.mark.parametrize("n", [1, 7, 64, 256])
def test_input_builder_equals_agent_inputs(n: int) -> None:
    rng = np.random.default_rng(n)
    mean, std = rng.normal(0, 1, 16), rng.uniform(0.1, 2, 16)
    build = InputBuilder(mean, std)
    for seed in range(3):            # buffers are reused across ticks and sizes
        f = _features(n, seed)
        prev = rng.integers(0, len(LEVELS), n)
        want = agent_inputs(observation_matrix(f), f.up, prev, mean, std)
        got = build(f, prev)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_input_builder_with_no_up_server_and_garbage() -> None:
    f = _features(5, 1)
    f.admin_state[:] = lib.MLB_ADMIN_DOWN
    f.active[0] = np.inf
    f.fct[1, 2] = np.nan
    mean, std = np.zeros(16), np.ones(16)
    prev = np.array([0, 9, -3, 2, 4])             # out of range levels are clipped
    want = agent_inputs(observation_matrix(f), f.up, prev, mean, std)
    got = InputBuilder(mean, std)(f, prev)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gru_step_matches_torch_equations_and_updates_in_place() -> None:
    p = _params()
    step = GruStep(*(p[k] for k in PARAM_SHAPES))
    rng = np.random.default_rng(1)
    h = np.zeros((300, HIDDEN), dtype=np.float32)      # larger than the first buffers
    h_ref = np.zeros((300, HIDDEN))
    for _ in range(5):
        x = rng.normal(0, 1, (300, input_dim())).astype(np.float32)
        q_ref, h_ref = _reference_step(p, x.astype(np.float64), h_ref)
        q = step(x, h)
        np.testing.assert_allclose(q, q_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-5)   # h was updated in place


def test_numpy_agent_step_returns_fresh_arrays() -> None:
    agent = NumpyAgent(_params())
    x = np.ones((4, input_dim()), dtype=np.float32)
    h0 = agent.init_hidden(4)
    q1, h1 = agent.step(x, h0)
    q2, h2 = agent.step(x, h1)
    assert not h0.any()                                # the input hidden is not touched
    assert not np.shares_memory(q1, q2) and not np.shares_memory(h1, h2)
    assert not np.allclose(h1, h2)


def test_inconsistent_shapes_are_refused() -> None:
    p = _params()
    p["gru.weight_hh"] = p["gru.weight_hh"][:, :-1]
    with pytest.raises(ValueError, match="inconsistent"):
        NumpyAgent(p)
