"""Scenario generator: reproducible, families tagged, held-out set disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from marllb.sim import scengen
from marllb.sim.scenario import ScenarioError, load_scenario


@pytest.mark.parametrize("name", list(scengen.FAMILIES))
def test_same_family_and_seed_same_scenario(name):
    seed = scengen.heldout_seed(3) if scengen.family(name).heldout else 12345
    a, b = scengen.draw(name, seed), scengen.draw(name, seed)
    assert a.model_dump() == b.model_dump()
    c = scengen.draw(name, seed + 1)
    assert c.model_dump() != a.model_dump()


def test_draws_cover_the_axes_and_stay_cheap():
    seen: dict[str, set] = {"arrivals": set(), "sizes": set(), "lbs": set()}
    n_servers = []
    for name in scengen.FAMILIES:
        for sc in scengen.eval_scenarios(name, 6):
            assert 2 <= sc.n_servers <= 64 and 1 <= sc.edge.n_lbs <= 6
            assert all(1 <= g.cores <= 16 and 0.25 <= g.speed <= 4 for g in sc.servers)
            assert sc.capacity_cores <= scengen.MAX_CAPACITY + 1e-6
            assert sc.traffic.duration_s <= scengen.MAX_DURATION_S + scengen.WARMUP_S
            seen["arrivals"].add(sc.traffic.arrivals)
            seen["sizes"].add(sc.traffic.sizes)
            seen["lbs"].add(sc.edge.n_lbs)
            n_servers.append(sc.n_servers)
    assert seen["arrivals"] == {"poisson", "bursty", "diurnal"}
    assert seen["sizes"] == {"exponential", "lognormal", "pareto"}
    assert max(seen["lbs"]) >= 5 and max(n_servers) > 32


def test_family_semantics():
    for k in range(5):
        sc = scengen.draw("equal-wrong", k)
        assert {g.static_weight for g in sc.servers} == {1.0}
        sc = scengen.draw("right-hetero", k)
        assert all(g.static_weight == pytest.approx(g.cores * g.speed, rel=1e-3)
                   for g in sc.servers)
        assert all(g.interference is None for g in sc.servers)
        sc = scengen.draw("stale-capacity", k)
        hit = [g for g in sc.servers if g.interference is not None]
        assert hit and all(g.interference.period_s >= scengen.PERMANENT_S for g in hit)
        sc = scengen.draw("skewed-lbs", k)
        assert sc.edge.n_lbs == 1 or sc.edge.split is not None
    tags = {n: scengen.family(n).static_right for n in scengen.FAMILIES}
    assert tags["right-hetero"] and tags["skewed-lbs"]
    assert not tags["equal-wrong"] and not tags["stale-capacity"] and not tags["interference"]
    assert tags["heldout-equal-wrong"] == tags["equal-wrong"]


def test_heldout_disjoint_by_seed_and_parameters():
    assert set(scengen.TRAINING_FAMILIES).isdisjoint(scengen.HELDOUT_FAMILIES)
    tr, ho = scengen.TRAIN_SEEDS, scengen.HELDOUT_SEEDS
    assert tr.stop <= ho.start or ho.stop <= tr.start
    with pytest.raises(scengen.ScenGenError, match="outside its seed range"):
        scengen.draw("right-hetero", scengen.heldout_seed(0))
    with pytest.raises(scengen.ScenGenError, match="outside its seed range"):
        scengen.draw("heldout-right-hetero", 5)
    for name in scengen.HELDOUT_FAMILIES:
        for sc in scengen.heldout_scenarios(name, 8):
            assert not scengen.in_training_region(sc), sc.name
    rng = np.random.default_rng(0)
    for _ in range(60):
        sc = scengen.training_scenario(rng)
        assert scengen.in_training_region(sc), sc.name
        fam = sc.name.split(":")[1]
        assert fam in scengen.TRAINING_FAMILIES
    with pytest.raises(scengen.ScenGenError, match="held-out"):
        scengen.training_scenario(rng, families=("heldout-equal-wrong",))


def test_training_scenario_reproducible_from_seed():
    a = scengen.training_scenario(7)
    b = scengen.training_scenario(np.random.default_rng(7))
    assert a.model_dump() == b.model_dump()


def test_load_scenario_gen_spec():
    sc = load_scenario("gen:equal-wrong:42")
    assert sc.model_dump() == scengen.draw("equal-wrong", 42).model_dump()
    assert load_scenario("gen:heldout-interference").name.startswith("gen:heldout-interference:")
    with pytest.raises(ScenarioError, match="unknown scenario family"):
        load_scenario("gen:nope:1")
    with pytest.raises(ScenarioError, match="gen:equal-wrong:x"):
        load_scenario("gen:equal-wrong:x")


def test_generated_scenario_runs():
    from marllb.sim.cluster import Cluster, scenario_trace

    sc = scengen.draw("interference", 3)
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(update={"duration_s": 8.0})})
    res = Cluster(sc, scenario_trace(sc, 0), "wrr_latency", seed=0).run()
    assert res.summary()["flows"] > 0 and np.isfinite(res.summary()["jct_mean_ms"])
