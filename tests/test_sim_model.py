"""The cluster model over the real C data-plane core: conservation, M/M/1-PS,
repeatability, interference, rejections, and the heuristics' ordering."""

from __future__ import annotations

import numpy as np
import pytest

from marllb.sim.cluster import Cluster, scenario_trace
from marllb.sim.scenario import Scenario, load_scenario
from marllb.sim.traces import Trace, generate


def one_server(rho: float, mean_s: float, **server) -> tuple[Scenario, float]:
    """One LB, one 1-core server; job sizes scaled so E[S] = mean_s."""
    sc = Scenario.model_validate({
        "name": "mm1",
        "speed": 3.67e6 / mean_s,
        "edge": {"n_lbs": 1},
        "traffic": {"target_load": rho, "duration_s": 10.0},
        "servers": [{"cores": 1, "workers": 100000, "backlog": 0, **server}],
    })
    return sc, rho / mean_s


def test_mm1_ps_mean_response_time():
    rho, es = 0.6, 0.002
    sc, lam = one_server(rho, es)
    tr = generate(rate=lam, duration_s=150_000 / lam, seed=11, integer_sizes=False)
    res = Cluster(sc, tr, "sed", seed=0).run()
    assert not res.rejected.any()
    # correct for the sample's own offered load and mean size
    es_hat = tr.sizes.mean() / sc.speed
    rho_hat = len(tr) * es_hat / tr.span_s
    expect = es_hat / (1 - rho_hat)
    assert res.jct.mean() == pytest.approx(expect, rel=0.04)
    assert res.jct.mean() == pytest.approx(es / (1 - rho), rel=0.08)


def test_ps_shares_the_core_exactly():
    """Two equal jobs arriving together on one 1-core server both take 2 x S."""
    sc, _ = one_server(0.5, 0.1)
    tr = Trace(np.array([0.0, 0.0, 10.0]), np.array([3.67e6, 3.67e6, 3.67e6]))
    res = Cluster(sc, tr, "sed").run()
    assert res.done[:2] == pytest.approx([0.2, 0.2])
    assert res.done[2] - 10.0 == pytest.approx(0.1)


def test_multicore_worker_cap_and_backlog():
    """2 cores, 2 workers, backlog 1: 4 simultaneous jobs -> 2 served in
    parallel at full speed, 1 waits, 1 rejected (and the LB sees an RST)."""
    sc = Scenario.model_validate({
        "name": "cap", "speed": 3.67e6 / 0.1, "edge": {"n_lbs": 1},
        "servers": [{"cores": 2, "workers": 2, "backlog": 1}],
    })
    tr = Trace(np.zeros(4), np.full(4, 3.67e6))
    res = Cluster(sc, tr, "sed").run()
    assert res.rejected.tolist() == [False, False, False, True]
    assert res.done[:3] == pytest.approx([0.1, 0.1, 0.2])
    assert np.isnan(res.done[3])
    assert res.meta["unfinished"] == 0


@pytest.mark.parametrize("policy", ["ecmp", "wcmp", "sed", "lsq", "static", "oracle"])
def test_conservation(policy):
    """Every arrival completes or is rejected; nothing is lost or doubled."""
    sc = load_scenario("small")
    # overload a bit so that rejections happen too
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(update={"target_load": 1.3})})
    tr = scenario_trace(sc, 0)
    res = Cluster(sc, tr, policy, seed=0).run()
    done = np.isfinite(res.done)
    assert len(res.arrival) == len(tr)
    assert np.all(done ^ res.rejected)
    assert np.all(res.done[done] >= res.arrival[done])
    assert res.meta.get("unfinished", 0) == 0
    assert np.all(res.server[done] >= 0)


def test_ecmp_overload_rejects_and_counts():
    sc = load_scenario("small")
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(update={"target_load": 1.5})})
    res = Cluster(sc, scenario_trace(sc, 0), "ecmp").run()
    s = res.summary()
    assert s["rejected_frac"] > 0
    assert s["rejected_frac"] == pytest.approx(res.rejected[res.arrival >= sc.warmup_s].mean())


@pytest.mark.parametrize("policy", ["wcmp", "sed", "oracle"])
def test_same_seed_same_result(policy):
    sc = load_scenario("small")
    a = Cluster(sc, scenario_trace(sc, 3), policy, seed=3).run()
    b = Cluster(sc, scenario_trace(sc, 3), policy, seed=3).run()
    assert np.array_equal(a.done, b.done, equal_nan=True)
    assert np.array_equal(a.server, b.server)
    assert a.summary() == b.summary()
    c = Cluster(sc, scenario_trace(sc, 4), policy, seed=4).run()
    assert not np.array_equal(a.arrival[:20], c.arrival[:20])


def test_policies_drive_the_core_through_msg_in():
    """The in-process daemon's msg_in reaches the core: accepted, never rejected."""
    sc = load_scenario("small")
    res = Cluster(sc, scenario_trace(sc, 0), "wcmp").run()
    assert res.meta["msg_in_accepted"] > 50
    assert res.meta["msg_in_rejected"] == 0
    # wcmp weights in force are the static ones: 2, 1, 1
    assert res.tick_weights[-1].tolist() == [2.0, 1.0, 1.0]


def test_interference_slows_a_server():
    sc = Scenario.model_validate({
        "name": "intf", "speed": 3.67e6 / 0.1, "edge": {"n_lbs": 1},
        "servers": [{"cores": 1, "interference": {"start_s": 1.0, "period_s": 10.0,
                                                  "on_s": 2.0, "factor": 0.5}}],
    })
    # one job at 0.5 s: 0.5 s of service before the slowdown at 1 s... it needs
    # only 0.1 s, so it is unaffected; one at 1.5 s runs at half speed.
    tr = Trace(np.array([0.5, 1.5, 5.0]), np.full(3, 3.67e6))
    res = Cluster(sc, tr, "sed").run()
    assert res.done - res.arrival == pytest.approx([0.1, 0.2, 0.1])
    # time-averaged capacity reflects the 2 s at half speed
    assert res.capacity_cores[0] < 1.0


def _mean_jct(name: str, policies: list[str], seeds: int = 2) -> dict[str, float]:
    sc = load_scenario(name)
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(update={"duration_s": 80.0})})
    out = {}
    for p in policies:
        out[p] = float(np.mean([Cluster(sc, scenario_trace(sc, s), p, seed=s).run()
                                .summary()["jct_mean_ms"] for s in range(seeds)]))
    return out


def test_oracle_no_worse_than_heuristics_s1():
    m = _mean_jct("s1", ["oracle", "ecmp", "wcmp", "sed", "lsq"])
    for p in ("ecmp", "wcmp", "sed", "lsq"):
        assert m["oracle"] <= m[p], m


def test_s2_wcmp_worse_than_lsq():
    m = _mean_jct("s2", ["wcmp", "lsq"])
    assert m["wcmp"] > 1.3 * m["lsq"], m


def test_in_memory_region_is_the_daemons_region():
    """The simulator's LBs use the daemon's own Region, in memory: what the
    daemon's writer puts in msg_in reads back, and nothing appears in /dev/shm."""
    import os

    from marllb.daemon._core import ffi
    from marllb.daemon.shm import Region, RegionError

    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    r = Region.in_memory(3, 2, generation=77, name="sim-test")
    assert (r.n_servers, r.n_workers, r.generation) == (3, 2, 77)
    with r.write_in() as m:
        m.msg_seq = 5
        m.n_servers = 3
        m.weight[2] = 4.5
    got = ffi.new("mlb_msg_in_t *")
    r.snapshot_in(got)
    assert (got.msg_seq, got.n_servers, got.weight[2]) == (5, 3, 4.5)
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) - before == set()
    r.close()
    with pytest.raises(RegionError):
        Region.in_memory(100_000, 1)


def test_cluster_core_matches_hand_computed_interleaving():
    """Arrivals, PS sharing and the FIFO backlog interleave as the model says:
    1 core, 1 worker, backlog 2; jobs of 0.1 s at 0, 0.05, 0.05, 0.05."""
    sc = Scenario.model_validate({
        "name": "fifo", "speed": 3.67e6 / 0.1, "edge": {"n_lbs": 1},
        "servers": [{"cores": 1, "workers": 1, "backlog": 2}],
    })
    tr = Trace(np.array([0.0, 0.05, 0.05, 0.05]), np.full(4, 3.67e6))
    res = Cluster(sc, tr, "sed").run()
    assert res.rejected.tolist() == [False, False, False, True]
    assert res.done[:3] == pytest.approx([0.1, 0.2, 0.3])
    orc = Cluster(sc, tr, "oracle").run()
    assert orc.done[:3] == pytest.approx([0.1, 0.2, 0.3])
