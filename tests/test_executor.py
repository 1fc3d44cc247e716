"""Executors: the same seeds give the same numbers in-process, on local
workers and on Ray; nothing imports ray unless asked."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from marllb.sim.lb import have_core

pytestmark = pytest.mark.skipif(not have_core(), reason="C data-plane core not built")
HAVE_RAY = importlib.util.find_spec("ray") is not None
EVAL = ["eval", "--scenario", "small", "--policy", "sed", "--policy", "lsq", "--seeds", "4",
        "--no-plots", "--quiet"]


def _eval(out: Path, *extra: str) -> dict:
    from marllb.sim.cli import main

    assert main([*EVAL, "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_local_workers_match_in_process(tmp_path: Path) -> None:
    serial = _eval(tmp_path / "serial")
    pooled = _eval(tmp_path / "pooled", "--executor", "local", "--workers", "2")
    assert pooled == serial
    assert serial["policies"]["sed"]["flows"] > 0
    assert (tmp_path / "pooled" / "details.json").read_text() == \
        (tmp_path / "serial" / "details.json").read_text()


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (the dist extra); CI installs it")
def test_ray_matches_local(tmp_path: Path) -> None:
    local = _eval(tmp_path / "local", "--executor", "local")
    ray = _eval(tmp_path / "ray", "--executor", "ray", "--workers", "2")
    assert ray == local


def test_no_ray_import_by_default() -> None:
    code = ("import sys; import marllb.sim.cli, marllb.sim.train, marllb.sim.evaluate, "
            "marllb.sim.executor as x; x.make_executor('local', 2).close(); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_bad_executor_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from marllb.sim.cli import main

    assert main([*EVAL, "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main([*EVAL, "--out", str(tmp_path), "--ray-address", "auto"]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err


def test_rollout_workers_repeat_across_executors() -> None:
    """Two rollout workers give the same episodes as running those tasks here."""
    pytest.importorskip("torch")
    import numpy as np

    from marllb.sim.executor import LocalExecutor, RolloutSource
    from marllb.sim.marl_env import MarlEnv, feature_stats
    from marllb.sim.scenario import load_scenario
    from marllb.sim.train import make_learner

    sc = load_scenario("small")
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(update={"duration_s": 2.0})})
    mean, std = feature_stats(sc, [1])
    env = MarlEnv(sc, mean, std)
    learner = make_learner("qmix", env, 0)
    rng = np.random.default_rng(0)

    class Here:   # in this process, but the batched (worker) path
        workers = 2

        def map(self, fn, items, on_result=None):  # noqa: ANN001, ANN202
            return [fn(x) for x in items]

    pool = LocalExecutor(2)
    try:
        a = RolloutSource([env], "qmix", 100, 0, pool)
        b = RolloutSource([env], "qmix", 100, 0, Here())
        for i in range(2):
            ea, eb = a.episode(i, learner, 0.5, rng), b.episode(i, learner, 0.5, rng)
            assert np.array_equal(ea.actions, eb.actions) and ea.ret == eb.ret
            assert a.eps_used == b.eps_used == 0.5
    finally:
        pool.close()
