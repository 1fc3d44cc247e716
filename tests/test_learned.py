"""Learned policies: checkpoints, daemon serving, trainer/daemon parity, fallback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
from marllb.daemon import checkpoint as ckpt  # noqa: E402
from marllb.daemon.features import FeatureExtractor, observation_matrix  # noqa: E402
from marllb.daemon.nets import LEVELS, NOOP_LEVEL, agent_inputs  # noqa: E402
from marllb.daemon.policies import PolicyError, make_policy  # noqa: E402
from marllb.sim.lb import have_core  # noqa: E402

pytestmark = pytest.mark.skipif(not have_core(), reason="C data-plane core not built")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny QMIX run on the small scenario (a real checkpoint, seconds)."""
    from marllb.sim.train import train

    out = tmp_path_factory.mktemp("qmix")
    train("qmix", "small", minutes=5, seed=0, out=out, eval_every_s=1e9, eval_seeds=1,
          duration=4, episodes=3, quiet=True)
    return out / "last"


def _features_sequence(duration: float = 6.0, seed: int = 3) -> list:
    """Features of LB 0, tick by tick, from a small-scenario run."""
    from marllb.daemon._core import ffi, lib
    from marllb.sim.cluster import Cluster, scenario_trace
    from marllb.sim.scenario import load_scenario

    sc = load_scenario("small")
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(
        update={"duration_s": duration})})
    ext = FeatureExtractor()
    view = ffi.new("mlb_out_view_t *")
    rng = ffi.new("mlb_rng_t *")
    retries = ffi.new("uint32_t *")
    out = []

    def hook(t: float, now_ns: int, lbs: list) -> bool:
        for lb in lbs:
            lb.timer(now_ns)
        if lib.mlb_out_snapshot_view(lbs[0].region, view, rng, 64, retries) == lib.MLB_OK:
            out.append(ext.update(view))
        return True

    Cluster(sc, scenario_trace(sc, seed), "sed", seed=seed).run(on_tick=hook)
    return out


def test_checkpoint_round_trip(trained: Path, tmp_path: Path) -> None:
    tensors, meta = ckpt.load(trained)
    ckpt.validate(tensors, meta, str(trained), algorithm="qmix")
    assert meta["algorithm"] == "qmix" and meta["levels"] == list(LEVELS)
    assert meta["scenario"] == "small" and meta["n_servers"] == 3
    copy = ckpt.save(tmp_path / "copy", tensors, meta)
    t2, m2 = ckpt.load(copy)
    assert m2 == meta
    assert set(t2) == set(tensors)
    for k in tensors:
        np.testing.assert_array_equal(t2[k], tensors[k])
    # and the daemon serves it: finite weights, static x a level
    pol = make_policy("qmix", checkpoint=str(copy))
    feats = _features_sequence(3.0)
    pol.reset(feats[0].n)
    for f in feats:
        w = pol.act(f)
        assert w.shape == (f.n,) and np.all(np.isfinite(w))
        ratio = w / f.static_weight
        assert all(np.isclose(r, LEVELS).any() for r in ratio)


def test_trainer_and_daemon_agree(trained: Path) -> None:
    """Same observation sequence -> same actions in the trainer's torch agent
    and in the daemon's numpy policy."""
    import torch

    from marllb.sim.qmix import Agent

    tensors, meta = ckpt.load(trained)
    agent = Agent(meta["input_dim"], meta["hidden"], len(meta["levels"]))
    agent.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    mean = np.asarray(meta["features"]["mean"])
    std = np.asarray(meta["features"]["std"])
    pol = make_policy("qmix", checkpoint=str(trained))
    feats = _features_sequence()
    assert len(feats) > 10
    pol.reset(feats[0].n)
    h = torch.zeros(feats[0].n, meta["hidden"])
    prev = np.full(feats[0].n, NOOP_LEVEL)
    levels = np.asarray(meta["levels"])
    n_diff = 0
    for f in feats:
        x = agent_inputs(observation_matrix(f), f.up, prev, mean, std)
        with torch.no_grad():
            q, h = agent(torch.from_numpy(x)[None], h)
        q = q[0].numpy()
        a_trainer = q.argmax(axis=1)
        q_daemon = pol.scores(f)
        np.testing.assert_allclose(q_daemon, q, rtol=1e-4, atol=1e-5)
        pol.prev = q_daemon.argmax(axis=1)
        n_diff += int((pol.prev != a_trainer).sum())
        prev = a_trainer
        # act() on a fresh step would advance the state: compare the weights it implies
        np.testing.assert_allclose(f.static_weight * levels[pol.prev],
                                   f.static_weight * levels[a_trainer])
    assert n_diff == 0


def test_act_equals_scores_argmax(trained: Path) -> None:
    feats = _features_sequence(3.0)
    p1 = make_policy("qmix", checkpoint=str(trained))
    p2 = make_policy("qmix", checkpoint=str(trained))
    p1.reset(feats[0].n)
    p2.reset(feats[0].n)
    for f in feats:
        w = p1.act(f)
        a = p2.scores(f).argmax(axis=1)
        p2.prev = a
        np.testing.assert_allclose(w, f.static_weight * np.asarray(LEVELS)[a])


def _edit_meta(src: Path, dst: Path, **changes: object) -> Path:
    tensors, meta = ckpt.load(src)
    for k, v in changes.items():
        if k == "feature_names":
            meta["features"]["names"] = v
        else:
            meta[k] = v
    return ckpt.save(dst, tensors, meta)


def test_mismatched_checkpoints_refused(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        make_policy("qmix", checkpoint=str(tmp_path / "missing"))
    with pytest.raises(PolicyError, match="algorithm is 'qmix', expected 'sac_gru'"):
        make_policy("sac_gru", checkpoint=str(trained))
    bad = _edit_meta(trained, tmp_path / "feat", feature_names=["active", "other"])
    with pytest.raises(PolicyError, match="features.names"):
        make_policy("qmix", checkpoint=str(bad))
    bad = _edit_meta(trained, tmp_path / "lv", levels=[1.0, 2.0])
    with pytest.raises(PolicyError, match="input_dim"):
        make_policy("qmix", checkpoint=str(bad))
    fixed = _edit_meta(trained, tmp_path / "n3", servers_min=3, servers_max=3)
    pol = make_policy("qmix", checkpoint=str(fixed))
    pol.reset(3)
    with pytest.raises(PolicyError, match=r"trained for 3 servers .*the region has 7"):
        pol.reset(7)
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(PolicyError, match="garbage.safetensors: unreadable tensors: header"):
        make_policy("qmix", checkpoint=str(tmp_path / "garbage"))
    # an old-style pair (no metadata embedded in the tensors) with a broken sidecar
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, dtype=np.float32)}, str(tmp_path / "garbage.safetensors"))
    with pytest.raises(PolicyError, match="garbage.json: unreadable JSON"):
        make_policy("qmix", checkpoint=str(tmp_path / "garbage"))


def test_daemon_falls_back_on_non_finite_output(trained: Path, tmp_path: Path) -> None:
    from marllb.daemon.tick import PolicySlot

    # NaN tensors are refused at load (test_reliability_checkpoint); poison a
    # loaded network in memory to get a policy whose output is non-finite
    feats = _features_sequence(3.0)
    pol = make_policy("qmix", checkpoint=str(trained))
    pol.net.core.bh[:] = np.nan
    pol.reset(feats[0].n)
    assert np.all(np.isnan(pol.act(feats[-1])))
    slot = PolicySlot("qmix", str(trained), "sed")
    assert slot.policy is not None and slot.load_error is None
    slot.policy.net.core.bh = np.full_like(slot.policy.net.core.bh, np.nan)
    w, used, reason = slot.act(feats[-1])
    assert used.name == "sed"
    assert reason is not None and "non-finite" in reason
    np.testing.assert_allclose(w, feats[-1].static_weight)
    # a healthy checkpoint is used, not the fallback
    ok = PolicySlot("qmix", str(trained), "sed")
    w, used, reason = ok.act(feats[-1])
    assert used.name == "qmix" and reason is None and np.all(np.isfinite(w))


def test_hidden_state_reset_on_generation_change(trained: Path) -> None:
    feats = _features_sequence(3.0)
    pol = make_policy("qmix", checkpoint=str(trained))
    pol.reset(feats[0].n)
    for f in feats[:5]:
        pol.act(f)
    assert np.any(pol.h != 0)
    h_before = pol.h.copy()
    f = feats[5]
    f.dp_gen = f.dp_gen + 2
    fresh = make_policy("qmix", checkpoint=str(trained))
    fresh.reset(f.n)
    np.testing.assert_allclose(pol.scores(f), fresh.scores(f), rtol=1e-5, atol=1e-6)
    assert not np.allclose(pol.h, h_before)


def test_shipped_checkpoints_load() -> None:
    """The shipped learned policies load under their names (v2 set-network
    checkpoints now; a v1 GRU checkpoint would load through the same names)."""
    for algo in ("qmix", "sac_gru", "matd3"):
        if not ckpt.shipped(algo).is_file():
            pytest.skip(f"no shipped {algo} checkpoint")
        pol = make_policy(algo)
        assert pol.name == algo and pol.learned
        assert pol.meta["algorithm"] == algo or algo in pol.meta.get("served_as", [])
        json.dumps(pol.describe())


def test_daemon_does_not_import_sim() -> None:
    code = ("import sys; from marllb.daemon.policies import make_policy; make_policy('lsq'); "
            "import marllb.daemon.policies.learned; "
            "print(sorted(m for m in sys.modules if m.startswith('marllb.sim') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
