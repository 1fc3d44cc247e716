"""Safe rollout: versioned checkpoints, the canary guard, the trajectory log."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marllb.daemon import checkpoint as ckpt
from marllb.daemon.canary import (
    PROMOTED,
    ROLLED_BACK,
    CanaryGuard,
    CanaryPlan,
    DirBoard,
    MemoryBoard,
    PlanError,
    load_plan,
    msprt_lambda,
    write_plan,
)
from marllb.daemon.trajlog import TrajectoryLog, TrajRecord, read_log, segments
from marllb.daemon.versions import CheckpointStore, VersionError, parse_ref

# -- versions ----------------------------------------------------------------------------


def _store_with_two(tmp_path: Path) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "store")
    src = ckpt.shipped("qmix")
    assert store.add("qmix", src, training={"command": "lbsim train ..."}) == "v1"
    assert store.add("qmix", src, parent="qmix@v1",
                     gate={"passed": True, "why": "eval ok"}) == "v2"
    return store


def test_versions_add_list_resolve(tmp_path: Path) -> None:
    store = _store_with_two(tmp_path)
    assert store.versions("qmix") == ["v1", "v2"]
    assert store.resolve("qmix@latest") == store.root / "qmix" / "v2" / "policy.safetensors"
    assert store.resolve("qmix@previous").parent.name == "v1"
    m = store.manifest("qmix@v2")
    assert m["parent"] == "qmix@v1" and set(m["files"]) == {"policy.safetensors", "policy.json"}
    rows = store.listing()
    assert [r["policy"] for r in rows] == ["qmix@v1", "qmix@v2"]
    assert [r["gate"] for r in rows] == [False, True]
    # the resolved version loads as a checkpoint
    tensors, meta = ckpt.load(store.resolve("qmix@v2"))
    assert meta["algorithm"] == "qmix" and tensors


def test_versions_refuse_tampered_file_and_ungated_canary(tmp_path: Path) -> None:
    store = _store_with_two(tmp_path)
    p = store.root / "qmix" / "v2" / "policy.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(VersionError, match="policy.safetensors sha256"):
        store.resolve("qmix@v2")
    with pytest.raises(VersionError, match="has not passed the evaluation gate"):
        store.require_gate("qmix@v1")
    store.require_gate("qmix@v2")
    with pytest.raises(VersionError, match="not in"):
        store.resolve("qmix@v9")
    for bad in ("qmix", "qmix@2", "../x@v1", "qmix@v0"):
        with pytest.raises(VersionError, match="expected NAME@vN"):
            parse_ref(bad)


# -- the sequential test ------------------------------------------------------------------


def test_msprt_false_alarm_rate_and_power() -> None:
    """Checked after every sample, the always-valid test keeps its false-alarm rate."""
    rng = np.random.default_rng(5)
    alpha, tau, runs, n = 0.05, 0.1, 400, 60
    false = 0
    for _ in range(runs):
        x = rng.normal(0.0, 0.1, n)
        if any(msprt_lambda(x[:k], 0.0, tau) >= 1 / alpha for k in range(5, n + 1)):
            false += 1
    assert false / runs <= alpha + 0.03
    hits = sum(any(msprt_lambda(x[:k], 0.0, tau) >= 1 / alpha for k in range(5, n + 1))
               for x in (rng.normal(0.15, 0.1, n) for _ in range(50)))
    assert hits >= 48


def _feed(g: CanaryGuard, key: int, mean: float, window_s: float = 1.0) -> None:
    g.observe(int(key * window_s * 1e9), (mean, mean * 2))


def _run_guards(plan: CanaryPlan, cand_mean: float, inc_mean: float, windows: int,
                rng: np.random.Generator) -> list[CanaryGuard]:
    board = MemoryBoard()
    guards = [CanaryGuard(plan, f"lb{k}", board) for k in range(4)]
    for key in range(windows):
        for g in guards:
            base = cand_mean if g.serving == plan.candidate else inc_mean
            _feed(g, key, base * math.exp(rng.normal(0, 0.03)), plan.window_s)
    return guards


def test_guard_rolls_back_a_worse_candidate_and_promotes_a_better_one() -> None:
    plan = CanaryPlan(candidate="new", incumbent="old", lbs=("lb0",), window_s=1.0,
                      min_windows=5, warmup_windows=1, calibration_windows=3)
    rng = np.random.default_rng(1)
    guards = _run_guards(plan, cand_mean=0.30, inc_mean=0.20, windows=40, rng=rng)
    g0 = guards[0]
    assert g0.verdict == ROLLED_BACK and g0.serving == "old"
    assert g0.decisions[0].window < 1 + 3 + 8      # warm-up + calibration + a few windows
    assert all(g.verdict == "running" and g.serving == "old" for g in guards[1:])
    guards = _run_guards(plan, cand_mean=0.15, inc_mean=0.20, windows=60, rng=rng)
    assert guards[0].verdict == PROMOTED and "better than the incumbent" in guards[0].reason
    assert all(g.verdict == PROMOTED and g.serving == "new" for g in guards)


def test_guard_ab_equal_policies_no_verdict() -> None:
    plan = CanaryPlan(candidate="new", incumbent="old", lbs=("lb0",), window_s=1.0,
                      min_windows=5, warmup_windows=1, calibration_windows=3, max_windows=500)
    rng = np.random.default_rng(2)
    guards = _run_guards(plan, cand_mean=0.2, inc_mean=0.2, windows=60, rng=rng)
    assert guards[0].verdict == "running"


def test_guard_calibration_removes_lb_bias() -> None:
    """A canary LB that is 10% slower by itself (skewed edge split) is not blamed for it."""
    plan = CanaryPlan(candidate="new", incumbent="old", lbs=("lb0",), window_s=1.0,
                      min_windows=5, warmup_windows=1, calibration_windows=5, max_windows=500)
    board = MemoryBoard()
    guards = [CanaryGuard(plan, f"lb{k}", board) for k in range(3)]
    rng = np.random.default_rng(3)
    for key in range(80):
        for g in guards:
            _feed(g, key, (0.22 if g.lb == "lb0" else 0.2) * math.exp(rng.normal(0, 0.02)))
    assert guards[0].verdict == "running"
    assert guards[0].status()["bias_pct"] == pytest.approx(10.0, abs=3.0)


def test_guard_rolls_back_when_candidate_falls_back() -> None:
    plan = CanaryPlan(candidate="new", incumbent="old", lbs=("lb0",), window_s=1.0,
                      calibration_windows=0, warmup_windows=0)
    g = CanaryGuard(plan, "lb0", MemoryBoard())
    assert g.serving == "new"
    dec = g.observe(10**9, (0.2, 0.4), candidate_failed="policy 'new' failed to load")
    assert dec is not None and dec.verdict == ROLLED_BACK and g.serving == "old"
    assert "failed to load" in g.reason


def test_plan_file_round_trip_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "canary.json"
    plan = CanaryPlan(candidate="qmix@v2", incumbent="qmix@v1", lbs=("lb0", "lb3"))
    write_plan(p, plan)
    assert load_plan(p) == plan
    p.write_text(json.dumps({**plan.to_dict(), "alpha": 2.0}))
    with pytest.raises(PlanError, match="alpha = 2.0"):
        load_plan(p)
    p.write_text(json.dumps({**plan.to_dict(), "lbs": []}))
    with pytest.raises(PlanError, match="lbs must be"):
        load_plan(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(PlanError, match="UTF-8"):
        load_plan(p)
    with pytest.raises(PlanError, match="No such file"):
        load_plan(tmp_path / "missing.json")


def test_dir_board_round_trip(tmp_path: Path) -> None:
    b = DirBoard(tmp_path / "board")
    b.write("lb1", {"lb": "lb1", "windows": [[1, 0.2, 0.4, "sed"]]})
    (tmp_path / "board" / "lb2.json").write_text("{torn")
    assert b.lbs() == ["lb1", "lb2"]
    assert b.read("lb1")["windows"][0][3] == "sed"
    assert b.read("lb2") is None and b.read("nope") is None


# -- in the simulator ------------------------------------------------------------------------


def test_sim_bad_candidate_rolled_back_incumbent_jct_restored() -> None:
    from marllb.sim.cmd_rollout import simulate
    from marllb.sim.scenario import load_scenario

    sc = load_scenario("rollout_steady")
    plan = CanaryPlan(candidate="inverted_static", incumbent="sed", lbs=("lb1",))
    res = simulate(sc, plan, seed=0)
    g = res.guards[1]
    assert g.verdict == ROLLED_BACK, g.status()
    dec = g.decisions[0]
    start = (plan.warmup_windows + plan.calibration_windows + 1) * plan.window_s
    assert dec.t_ns / 1e9 - 1.0 <= start + 8 * plan.window_s      # bounded: a few windows
    assert all(s[1] == "sed" for s in res.serving[-10:])
    t_dec = dec.t_ns / 1e9 - 1.0
    during = res.jct_by_lb(start + plan.window_s, t_dec)
    after = res.jct_by_lb(t_dec + 2 * plan.window_s, float(res.result.arrival.max()))
    others_after = np.mean([after[k] for k in ("lb0", "lb2", "lb3")])
    assert during["lb1"] > 1.3 * np.mean([during[k] for k in ("lb0", "lb2", "lb3")])
    assert after["lb1"] < 1.15 * others_after


def test_sim_good_candidate_promoted_fleet_wide(tmp_path: Path) -> None:
    from marllb.sim.cmd_rollout import report, simulate
    from marllb.sim.scenario import load_scenario

    sc = load_scenario("rollout_steady")
    plan = CanaryPlan(candidate="sed", incumbent="inverted_static", lbs=("lb1",))
    res = simulate(sc, plan, seed=1)
    assert res.guards[1].verdict == PROMOTED, res.guards[1].status()
    assert all(s == "sed" for s in res.serving[-1])
    rep = report(res, sc, plan, tmp_path / "out")
    assert {d["verdict"] for d in rep["decisions"]} == {PROMOTED}
    assert (tmp_path / "out" / "rollout.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["decisions"]


# -- trajectory log ---------------------------------------------------------------------------


def _rec(t: int, n: int = 7) -> TrajRecord:
    obs = np.full((n, 16), t % 97, np.float32)
    return TrajRecord(t, "qmix", obs, np.arange(n, dtype=np.float32))


def test_trajlog_round_trip_bounded_and_torn_tail(tmp_path: Path) -> None:
    log = TrajectoryLog(tmp_path / "t", max_bytes=20_000, segment_bytes=4_000)
    for t in range(400):
        assert log.append(_rec(t))
    log.close()
    total = sum(s.stat().st_size for s in segments(tmp_path / "t"))
    assert total <= 20_000 + 4_000
    recs = list(read_log(tmp_path / "t"))
    ts = [r.t_ns for r in recs]
    assert ts == sorted(ts) and ts[-1] == 399 and len(ts) < 400   # oldest trimmed
    assert recs[-1].obs.shape == (7, 16) and recs[-1].policy == "qmix"
    last = segments(tmp_path / "t")[-1]
    with open(last, "ab") as f:
        f.write(b"MTRJ\x00\x10")        # a torn record
    assert [r.t_ns for r in read_log(tmp_path / "t")] == ts


_WRITER = """
import sys, numpy as np
from marllb.daemon.trajlog import TrajectoryLog, TrajRecord
log = TrajectoryLog(sys.argv[1], max_bytes=1 << 20, segment_bytes=64 << 10, fsync_every_s=0.01)
t = 0
while True:
    log.append(TrajRecord(t, "sed", np.full((64, 16), t, np.float32), np.ones(64, np.float32)))
    if t == 50:
        print("ready", flush=True)
    t += 1
"""


def test_trajlog_survives_kill9(tmp_path: Path) -> None:
    for trial in range(3):
        d = tmp_path / f"k{trial}"
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(d)], stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(0.05 * (trial + 1))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        recs = list(read_log(d))
        assert len(recs) > 50
        ts = [r.t_ns for r in recs]
        assert ts == list(range(ts[0], ts[0] + len(ts)))     # contiguous, nothing torn inside
        assert all(float(r.obs[0, 0]) == r.t_ns for r in recs[-5:])
        assert sum(s.stat().st_size for s in segments(d)) <= (1 << 20) + (64 << 10)


def _record_log(sc: Any, policy: str, path: Path, max_mb: float = 8,
                until_s: float = 1e9) -> Any:
    """Run ``sc`` with ``policy`` in-process and log LB 0's ticks as lbd would."""
    from marllb.daemon.rollout import TrajectoryRecorder
    from marllb.sim.cluster import Cluster, scenario_trace
    from marllb.sim.lb import SimDaemon

    rec = TrajectoryRecorder(str(path), max_mb=max_mb)
    ds: list[SimDaemon] = []

    def hook(t: float, now_ns: int, lbs: list) -> bool:
        if not ds:
            ds.extend(SimDaemon(lb, policy, ttl_ns=10**9, seed=k) for k, lb in enumerate(lbs))
        for lb, d in zip(lbs, ds, strict=True):
            lb.timer(now_ns)
            d.tick()
        rec.record(ds[0].last)
        return t < until_s

    Cluster(sc, scenario_trace(sc, 0), policy).run(on_tick=hook)
    rec.close()
    return rec


# -- lbd / lbctl side ---------------------------------------------------------------------------


def test_split_spec_and_slot_factory(tmp_path: Path) -> None:
    from marllb.daemon.rollout import slot_factory, split_spec

    store = _store_with_two(tmp_path)
    assert split_spec("sed", None) == ("sed", None)
    assert split_spec("qmix=/x/y.safetensors", None) == ("qmix", "/x/y.safetensors")
    name, path = split_spec("qmix@v2", str(store.root))
    assert name == "qmix" and path == str(store.root / "qmix" / "v2" / "policy.safetensors")
    make = slot_factory(str(store.root), "sed")
    assert make("qmix@v1").policy is not None
    bad = make("qmix@v7")          # a version that does not exist: falls back, says why
    assert bad.policy is None and "not in" in bad.load_error


def _lbctl_args(**kw: object) -> object:
    import argparse

    return argparse.Namespace(**kw)


def test_lbctl_canary_start_status_stop(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from marllb.daemon.rollout import cmd_canary, cmd_policy_list

    store = _store_with_two(tmp_path)
    plan = tmp_path / "canary.json"
    common = {"plan": str(plan), "store": str(store.root), "board": str(tmp_path / "board")}
    rc = cmd_canary(_lbctl_args(canary_cmd="start", candidate="qmix@v1", lbs="lb0",
                                incumbent="sed", threshold=0.05, **common))
    assert rc == 78 and "evaluation gate" in capsys.readouterr().out and not plan.exists()
    rc = cmd_canary(_lbctl_args(canary_cmd="start", candidate="qmix@v2", lbs="lb0,lb2",
                                incumbent="qmix@v1", threshold=0.05, **common))
    assert rc == 0 and load_plan(plan).lbs == ("lb0", "lb2")
    DirBoard(tmp_path / "board").write("lb0", {"lb": "lb0", "role": "candidate",
                                               "serving": "qmix@v2", "verdict": "running",
                                               "windows": [[1, 0.25, 0.5, "qmix@v2"]]})
    capsys.readouterr()
    assert cmd_canary(_lbctl_args(canary_cmd="status", json=False, **common)) == 0
    out = capsys.readouterr().out
    assert "qmix@v2" in out and "250.0" in out and "running" in out
    assert cmd_canary(_lbctl_args(canary_cmd="stop", **common)) == 0 and not plan.exists()
    assert cmd_policy_list(_lbctl_args(store=str(store.root), json=False)) == 0
    out = capsys.readouterr().out
    assert "qmix@v1" in out and "qmix@v2" in out and "pass" in out


def test_trajectory_recorder_from_tick_records(tmp_path: Path) -> None:
    from marllb.sim.scenario import load_scenario

    rec = _record_log(load_scenario("small"), "sed", tmp_path / "traj", max_mb=1, until_s=5.0)
    recs = list(read_log(tmp_path / "traj"))
    assert len(recs) >= 15 and recs[0].policy == "sed"
    assert recs[-1].obs.shape == (3, 16) and np.all(recs[-1].weights > 0)
    assert rec.status()["records"] == len(recs) and rec.status()["errors"] == 0


def test_calibrate_finds_the_slowed_servers(tmp_path: Path) -> None:
    """A log from a cluster whose 4-core servers run at half speed (static weights do
    not know) calibrates to a scenario with those servers slow and the others nominal."""
    from marllb.sim.calibrate import CalibrationError, calibrate
    from marllb.sim.scenario import load_scenario

    sc = load_scenario("s1").model_copy(deep=True)
    sc.servers[1].speed = 0.5
    sc.traffic.target_load = 0.6
    sc.traffic.duration_s = 90
    _record_log(sc, "sed", tmp_path / "log")
    c = calibrate(tmp_path / "log", n_lbs=2)
    assert np.all(np.abs(c.speed[:4] - 1.0) < 0.25), c.speed
    assert np.all((c.speed[4:] > 0.3) & (c.speed[4:] < 0.7)), c.speed
    assert c.speed[4:].max() < 0.75 * c.speed[:4].min()
    assert c.scenario.n_servers == 7 and 0.3 < c.load < 0.9
    with pytest.raises(CalibrationError, match="no records"):
        calibrate(tmp_path / "empty")


def test_train_from_log_calibrates_trains_gates_and_stores(tmp_path: Path) -> None:
    """lbsim train --from-log: calibrated scenario -> fine-tune -> gate -> a store version."""
    from marllb.sim.cli import main
    from marllb.sim.scenario import load_scenario

    sc = load_scenario("small").model_copy(deep=True)
    sc.traffic.duration_s = 40
    _record_log(sc, "qmix_v1", tmp_path / "log", max_mb=4)
    out, store = tmp_path / "ft", tmp_path / "store"
    rc = main(["train", "--from-log", str(tmp_path / "log"), "--log-lbs", "2",
               "--init", str(ckpt.shipped("qmix_v1")), "--algo", "qmix", "--episodes", "1",
               "--out", str(out), "--store", str(store), "--quiet"])
    rep = json.loads((out / "finetune.json").read_text())
    assert rc == (0 if rep["gate"]["passed"] else 1)
    assert len(rep["fitted_speed"]) == 3 and (out / "calibrated.toml").is_file()
    m = CheckpointStore(store).manifest("qmix@v1")
    assert m["gate"]["passed"] == rep["gate"]["passed"]
    assert m["training"]["from_log"] == str(tmp_path / "log")
    assert {"jct_mean_ms", "jct_p99_ms"} <= set(m["evaluation"]["candidate"])
    if not rep["gate"]["passed"]:
        with pytest.raises(VersionError, match="evaluation gate"):
            CheckpointStore(store).require_gate("qmix@v1")
