"""`lbsim export`: ONNX graphs of the shipped checkpoints match the daemon's numpy inference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from marllb.daemon import checkpoint as ckpt  # noqa: E402
from marllb.daemon._core import ffi, lib  # noqa: E402
from marllb.daemon.features import FeatureExtractor, observation_matrix  # noqa: E402
from marllb.daemon.policies import make_policy  # noqa: E402
from marllb.sim.cli import main  # noqa: E402
from marllb.sim.cluster import Cluster, scenario_trace  # noqa: E402
from marllb.sim.scenario import load_scenario  # noqa: E402


def record_frames(scenario: str = "small", duration: float = 10.0, lb: int = 0) -> list[Any]:
    """LB ``lb``'s features, one per tick, from a short simulator run under sed."""
    sc = load_scenario(scenario)
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(
        update={"duration_s": duration})})
    ext = FeatureExtractor()
    view = ffi.new("mlb_out_view_t *")
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_rng_seed(rng, 5)
    retries = ffi.new("uint32_t *")
    frames: list[Any] = []

    def hook(t: float, now_ns: int, lbs: list) -> bool:
        for x in lbs:
            x.timer(now_ns)
        if lib.mlb_out_snapshot_view(lbs[lb].region, view, rng, 64, retries) == lib.MLB_OK:
            frames.append(ext.update(view))
        return True

    Cluster(sc, scenario_trace(sc, 1), "sed", seed=1).run(on_tick=hook)
    return frames


@pytest.fixture(scope="module")
def frames() -> list[Any]:
    fr = record_frames()
    assert len(fr) > 20
    return fr


def daemon_run(algo: str, frames: list[Any]) -> list[dict[str, np.ndarray]]:
    """The daemon's own policy object over the frames: scores, hidden, action, weights."""
    pol = make_policy(f"{algo}_v1")
    pol.reset(frames[0].n)
    scores: list[np.ndarray] = []
    orig = pol.scores

    def spy(f: Any) -> np.ndarray:
        q = orig(f)
        scores.append(np.array(q))
        return q

    pol.scores = spy  # type: ignore[method-assign]
    out = []
    for f in frames:
        w = pol.act(f)
        out.append({"scores": scores[-1], "h": np.array(pol.h), "action": np.array(pol.prev),
                    "weight": np.array(w)})
    return out


def onnx_run(path: Path, frames: list[Any], noop: int, hidden: int
             ) -> list[dict[str, np.ndarray]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = frames[0].n
    h = np.zeros((n, hidden), np.float32)
    prev = np.full(n, noop, np.int64)
    out = []
    for f in frames:
        q, h, a, lvl = sess.run(None, {"obs": observation_matrix(f),
                                       "up": np.asarray(f.up, bool),
                                       "prev_action": prev, "h": h})
        prev = a
        out.append({"scores": q, "h": h, "action": a,
                    "weight": np.asarray(f.static_weight) * lvl})
    return out


@pytest.mark.parametrize("algo", ["qmix", "sac_gru"])
def test_parity_with_the_daemon_on_recorded_ticks(algo: str, frames: list[Any],
                                                  tmp_path: Path) -> None:
    out = tmp_path / f"{algo}.onnx"
    assert main(["export", "--checkpoint", str(ckpt.shipped(f"{algo}_v1")), "--format", "onnx",
                 "--out", str(out)]) == 0
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["algorithm"] == algo
    meta = json.loads(ckpt.paths(ckpt.shipped(f"{algo}_v1"))[1].read_text())
    levels = meta["levels"]
    assert json.loads(props["levels"]) == levels
    ref = daemon_run(algo, frames)
    got = onnx_run(out, frames, levels.index(1.0), meta["hidden"])
    worst = {k: max(float(np.max(np.abs(r[k] - g[k]))) for r, g in zip(ref, got, strict=True))
             for k in ("scores", "h", "weight")}
    print(f"{algo}: max abs diff over {len(frames)} ticks: {worst}")
    assert worst["scores"] < 1e-4 and worst["h"] < 1e-5
    # the greedy level (hence the served weights) agree on every tick, unless two
    # levels' scores tie within float rounding
    for r, g in zip(ref, got, strict=True):
        q = r["scores"]
        top2 = np.sort(q, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-4
        np.testing.assert_array_equal(r["action"][clear], g["action"][clear])
    assert worst["weight"] < 1e-5
    # the hidden state does carry information: ticks differ from a stateless run
    assert max(float(np.abs(r["h"]).max()) for r in ref) > 1e-3


def test_normalisation_edge_cases(tmp_path: Path) -> None:
    """No server up (reference row is 0), out-of-range prev levels, huge counts."""
    from marllb.daemon.features import Features

    out = tmp_path / "q.onnx"
    assert main(["export", "--checkpoint", str(ckpt.shipped("qmix_v1")), "--out", str(out)]) == 0
    n = 4
    f = Features.empty(n)
    f.server_id = np.arange(n, dtype=np.uint32)
    f.admin_state = np.array([lib.MLB_ADMIN_DOWN] * n, dtype=np.uint32)
    f.static_weight = np.array([1.0, 2.0, 3.0, 4.0])
    f.active = np.array([0.0, 1e9, 5.0, 3.0])
    ref = daemon_run("qmix", [f, f])
    got = onnx_run(out, [f, f], 2, 64)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g["scores"], r["scores"], atol=1e-4)
        np.testing.assert_allclose(g["h"], r["h"], atol=1e-5)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    base = {"obs": observation_matrix(f), "up": np.ones(n, bool),
            "h": np.zeros((n, 64), np.float32)}
    q_hi = sess.run(["scores"], {**base, "prev_action": np.full(n, 99, np.int64)})[0]
    q_top = sess.run(["scores"], {**base, "prev_action": np.full(n, 4, np.int64)})[0]
    np.testing.assert_array_equal(q_hi, q_top)   # clipped to the last level like the daemon


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["export", "--checkpoint", str(tmp_path / "nope"), "--out",
               str(tmp_path / "x.onnx")])
    assert rc == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0] and err[0].startswith("lbsim: error:")
    # a checkpoint naming a network no exporter knows
    tp, mp = ckpt.paths(ckpt.shipped("qmix_v1"))
    shutil.copy(tp, tmp_path / "odd.safetensors")
    meta = json.loads(mp.read_text())
    meta["network"] = "perm-residual"
    (tmp_path / "odd.json").write_text(json.dumps(meta))
    rc = main(["export", "--checkpoint", str(tmp_path / "odd"), "--out",
               str(tmp_path / "x.onnx")])
    assert rc == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ONNX exporter for network 'perm-residual'" in err[0]
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnx_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx -> ImportError
    rc = main(["export", "--checkpoint", str(ckpt.shipped("qmix_v1")), "--out",
               str(tmp_path / "x.onnx")])
    assert rc == 69
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lbsim: error: export: the onnx package is not installed "
                   "(pip install 'marllb[onnx]')"]


def test_parity_at_64_servers_on_random_frames(tmp_path: Path) -> None:
    """64 servers, a few down, random counters and reservoir stats, 10 ticks."""
    from marllb.daemon.features import Features

    out = tmp_path / "s.onnx"
    assert main(["export", "--checkpoint", str(ckpt.shipped("sac_gru_v1")),
                 "--out", str(out)]) == 0
    rng = np.random.default_rng(4)
    n = 64
    frames = []
    for _ in range(10):
        f = Features.empty(n)
        f.server_id = np.arange(n, dtype=np.uint32)
        f.admin_state = np.where(rng.random(n) < 0.1, lib.MLB_ADMIN_DOWN,
                                 lib.MLB_ADMIN_UP).astype(np.uint32)
        f.static_weight = rng.choice([1.0, 2.0, 4.0], n)
        f.active = rng.integers(0, 60, n).astype(float)
        f.new_flow_rate = rng.exponential(50.0, n)
        f.fct = rng.exponential(0.3, (n, 5))
        f.fct_count = rng.integers(0, 256, n)
        f.age = rng.exponential(0.2, (n, 5))
        f.age_count = rng.integers(0, 256, n)
        frames.append(f)
    ref = daemon_run("sac_gru", frames)
    got = onnx_run(out, frames, 2, 64)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g["scores"], r["scores"], atol=1e-4)
        np.testing.assert_allclose(g["h"], r["h"], atol=1e-5)
