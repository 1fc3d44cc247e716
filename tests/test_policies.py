"""Policy registry, heuristics and sanitize."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marllb.daemon._core import lib
from marllb.daemon.features import Features
from marllb.daemon.policies import POLICIES, Policy, PolicyError, make_policy, register_policy
from marllb.daemon.sanitize import is_finite_output, sanitize


def feats(static=(1.0, 2.0, 4.0), admin=None) -> Features:
    f = Features.empty(len(static))
    f.static_weight = np.array(static, dtype=float)
    if admin is not None:
        f.admin_state = np.array(admin, dtype=np.uint32)
    return f


@pytest.mark.parametrize("name,mode,equal", [
    ("static", lib.MLB_MODE_SED, False), ("sed", lib.MLB_MODE_SED, False),
    ("wcmp", lib.MLB_MODE_WRANDOM, False), ("ecmp", lib.MLB_MODE_HASH, True),
    ("lsq", lib.MLB_MODE_LEAST_ACTIVE, True),
])
def test_heuristics(name, mode, equal):
    p = make_policy(name)
    assert p.name == name and p.mode == mode
    p.reset(3)
    w = p.act(feats())
    assert w.dtype == np.float64 and w.shape == (3,)
    np.testing.assert_array_equal(w, [1, 1, 1] if equal else [1, 2, 4])


def test_registry_errors_and_registration():
    with pytest.raises(PolicyError, match="unknown policy 'nope'"):
        make_policy("nope")
    with pytest.raises(PolicyError, match="takes no option"):
        make_policy("sed", bogus=1)
    make_policy("sed", checkpoint="/x")  # heuristics accept and ignore a checkpoint

    @register_policy("_test_broken")
    class Broken(Policy):
        def __init__(self, **kw):
            raise RuntimeError("corrupt checkpoint")

    try:
        with pytest.raises(PolicyError, match="corrupt checkpoint"):
            make_policy("_test_broken")
    finally:
        POLICIES.pop("_test_broken")


def test_sanitize_rules():
    # weights are relative (tests/test_sanitize.py): bounds are w_min/w_max x static
    f = feats(static=(1.0, 2.0, 4.0, 1.0), admin=[0, 0, 1, 2])
    w = sanitize([math.nan, -1.0, 5.0, 1e9], f, 0.1, 10.0)
    assert np.all(np.isfinite(w))
    assert w[0] == 1.0        # non-finite, up -> its static weight
    assert w[1] == pytest.approx(0.2)   # up never below w_min x static
    assert w[2] == 5.0        # drained: kept within [0, w_max x static]
    assert w[3] == 10.0
    # all zero never leaves
    f2 = feats(static=(1.0, 1.0), admin=[2, 2])
    np.testing.assert_array_equal(sanitize([0.0, 0.0], f2, 0.5, 2.0), [0.5, 0.5])
    # wrong shape / garbage type -> static weights for up servers
    np.testing.assert_array_equal(sanitize([1.0], feats(), 0.1, 10), [1, 2, 4])
    np.testing.assert_array_equal(sanitize("x", feats(), 0.1, 10), [1, 2, 4])
    # inf is non-finite -> its static weight times the others' multiplier (3/4);
    # 0 asks the lower bound (w_min x static); in-bound values published as asked
    np.testing.assert_allclose(sanitize([math.inf, 0, 3], feats(), 0.1, 3), [0.75, 0.2, 3])
    with pytest.raises(ValueError):
        sanitize([1.0], feats((1.0,)), 0.0, 1.0)


def test_is_finite_output():
    assert is_finite_output([1.0, 2.0], 2)
    assert not is_finite_output([1.0, math.nan], 2)
    assert not is_finite_output([1.0], 2)
    assert not is_finite_output(None, 2)


def test_linear_policy_checkpoint(tmp_path):
    import json

    from marllb.daemon.features import FEATURE_NAMES
    from marllb.daemon.policies.linear import save_linear

    w = np.zeros(len(FEATURE_NAMES))
    w[FEATURE_NAMES.index("static_weight")] = 1.0
    path = save_linear(str(tmp_path / "lin"), w, b=0.0, mode="wrandom")
    p = make_policy("linear", checkpoint=path)
    assert p.mode == lib.MLB_MODE_WRANDOM
    np.testing.assert_allclose(p.act(feats((0.0, 1.0, 2.0))), np.exp([0.0, 1.0, 2.0]), rtol=1e-6)
    # a feature set that does not match is refused with a clear reason
    meta_path = tmp_path / "lin.json"
    meta = json.loads(meta_path.read_text())
    meta["features"]["names"] = ["active"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match="trained on features"):
        make_policy("linear", checkpoint=path)
    with pytest.raises(PolicyError, match="no such file"):
        make_policy("linear", checkpoint=str(tmp_path / "missing"))
    with pytest.raises(PolicyError, match="no checkpoint"):
        make_policy("linear")


def test_policy_slot_skips_a_policy_that_cannot_serve_the_count():
    from marllb.daemon.tick import PolicySlot

    @register_policy("_test_two_only")
    class TwoOnly(Policy):
        def reset(self, n_servers):
            if n_servers != 2:
                raise ValueError("trained for 2 servers")

        def act(self, features):
            return np.full(features.n, 7.0)

    try:
        slot = PolicySlot("_test_two_only", None, "ecmp")
        w, used, reason = slot.act(feats((1.0, 2.0, 3.0)))
        assert used.name == "ecmp" and "cannot serve 3 servers" in reason
        np.testing.assert_array_equal(w, [1, 1, 1])
        w, used, reason = slot.act(feats((1.0, 2.0)))     # back to a count it serves
        assert used.name == "_test_two_only" and reason is None
        np.testing.assert_array_equal(w, [7, 7])
        # non-finite output: the fallback decides, the reason says why
        TwoOnly.act = lambda self, f: np.array([np.nan, 1.0])
        w, used, reason = slot.act(feats((1.0, 2.0)))
        assert used.name == "ecmp" and "non-finite" in reason
        TwoOnly.act = lambda self, f: 1 / 0
        w, used, reason = slot.act(feats((1.0, 2.0)))
        assert used.name == "ecmp" and "ZeroDivisionError" in reason
    finally:
        POLICIES.pop("_test_two_only")
