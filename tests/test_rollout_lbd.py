"""Safe rollout through the real lbd: NAME@VERSION, a canary plan, the trajectory log."""

from __future__ import annotations

import json

from marllb.daemon import checkpoint as ckpt
from marllb.daemon.canary import CanaryPlan, write_plan
from marllb.daemon.trajlog import read_log
from marllb.daemon.versions import CheckpointStore
from tests.fakedp import FakeDataPlane, unique_name
from tests.test_daemon import Lbd, Publisher, wait_for


def _config(tmp_path, **kw) -> object:
    p = tmp_path / "lbd.toml"
    p.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in kw.items()))
    return p


def test_lbd_serves_a_version_runs_a_canary_and_logs_trajectories(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    store.add("qmix", ckpt.shipped("qmix"), gate={"passed": True})
    plan = tmp_path / "canary.json"
    write_plan(plan, CanaryPlan(candidate="qmix@v1", incumbent="sed", lbs=("lbA",),
                                window_s=0.2, warmup_windows=0, calibration_windows=0))
    cfg = _config(tmp_path, checkpoint_store=str(tmp_path / "store"), lb_id="lbA",
                  canary_plan=str(plan), canary_board=str(tmp_path / "board"),
                  trajectory_log=str(tmp_path / "traj"), trajectory_log_max_mb=2)
    dp = FakeDataPlane.create(unique_name("ro"), n_servers=3, n_workers=1)
    pub = Publisher(dp, static_weight=[1.0, 2.0, 4.0], active=[2, 3, 4],
                    fct={0: [0.2] * 4, 1: [0.3] * 4, 2: [0.25] * 4})
    lbd = Lbd(tmp_path, dp.name, config=cfg)
    try:
        lbd.wait_ready()
        st = wait_for(lambda: (s := lbd.status()).get("canary") and s, what="canary status")
        c = st["canary"]
        assert c["role"] == "candidate" and c["serving"] == "qmix@v1"
        assert st["active_policy"] == "qmix" and st["state"] in ("running", "degraded")
        wait_for(lambda: (tmp_path / "board" / "lbA.json").is_file(), what="board entry")
        r = lbd.lbctl("canary", "--plan", str(plan), "--board", str(tmp_path / "board"),
                      "status")
        assert r.returncode == 0 and "lbA" in r.stdout and "qmix@v1" in r.stdout, r.stdout
        r = lbd.lbctl("policy", "list", "--store", str(tmp_path / "store"))
        assert r.returncode == 0 and "qmix@v1" in r.stdout
        # switch by version at run time; a missing version is refused, the old one kept
        r = lbd.lbctl("policy", "set", "qmix@v9")
        assert r.returncode == 1 and "not in" in r.stderr
        wait_for(lambda: lbd.status()["trajectory_log"]["records"] >= 5, what="trajectory")
    finally:
        pub.stop()
        lbd.stop()
        dp.close()
    recs = list(read_log(tmp_path / "traj"))
    assert len(recs) >= 5 and recs[-1].obs.shape == (3, 16)
    assert {r.policy for r in recs} == {"qmix"}


def test_lbd_refuses_a_tampered_version_at_start(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    store.add("qmix", ckpt.shipped("qmix"))
    t = tmp_path / "store" / "qmix" / "v1" / "policy.json"
    t.write_text(t.read_text().replace("qmix", "qmix "))
    cfg = _config(tmp_path, checkpoint_store=str(tmp_path / "store"), policy="qmix@v1")
    dp = FakeDataPlane.create(unique_name("ro"), n_servers=2, n_workers=1)
    pub = Publisher(dp, static_weight=[1.0, 2.0], active=[1, 1])
    lbd = Lbd(tmp_path, dp.name, config=cfg)
    try:
        lbd.wait_ready()
        st = wait_for(lambda: (s := lbd.status())["fallback_reason"] and s, what="fallback")
        assert "sha256" in st["fallback_reason"] and st["state"] == "degraded"
        assert st["active_policy"] == "sed"
    finally:
        pub.stop()
        lbd.stop()
        dp.close()
