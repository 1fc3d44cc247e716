"""Simulator throughput.

sim_flows_per_s       S1 (2 LBs, 7 servers), policy sed, generated trace:
                      flows simulated per wall second, end to end (real C core
                      per flow, per-tick timer + in-process daemon per LB)
sim_trace400_wall_s   the whole ../shared/traces/rate_400.csv (about 78,000
                      flows), time-scaled to S1's target load, policy sed
                      (skipped when the trace is absent)
Extra figures, to show where the time goes:
sim_flow_path_flows_per_s   the same S1 run with ticks so rare that only the
                            per-flow path (SYN/FIN through the core + PS model) counts
sim_oracle_flows_per_s      S1 with the oracle (no LBs, no ticks)
sim_tick_us_per_lb          one LB's timer + daemon tick (snapshot, features,
                            policy, sanitize, msg_in), microseconds
env_agent_steps_per_s       MarlEnv on S1 (the rollout path the trainers use),
                            random levels, one process: agent (LB) steps per
                            wall second
env_agent_steps_per_s_2workers  the same, 4 episodes on 2 local worker
                            processes (marllb.sim.executor), pool already up
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

GROUP = "sim"
REPEATS = 5


def _trace400() -> Path:
    """../shared/traces/rate_400.csv of the checkout or of any folder above it."""
    for up in Path(__file__).resolve().parents[2:]:
        p = up / "shared" / "traces" / "rate_400.csv"
        if p.is_file():
            return p
    return Path(__file__).resolve().parents[3] / "shared" / "traces" / "rate_400.csv"


TRACE400 = _trace400()


def _best(fn, n=REPEATS):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def run(progress) -> dict[str, float]:
    from marllb.daemon._core import lib
    from marllb.sim.cluster import Cluster, scenario_trace
    from marllb.sim.lb import SimDaemon, SimLB
    from marllb.sim.scenario import load_scenario
    from marllb.sim.traces import load_trace

    out: dict[str, float] = {}
    sc = load_scenario("s1")
    tr = scenario_trace(sc, 0)
    progress(f"S1: {len(tr)} flows over {tr.span_s:.0f} s simulated")
    t = _best(lambda: Cluster(sc, tr, "sed", 0).run())
    out["sim_flows_per_s"] = len(tr) / t
    rare = sc.model_copy(update={"tick_ms": 60_000.0})   # the core's longest publish interval
    out["sim_flow_path_flows_per_s"] = len(tr) / _best(lambda: Cluster(rare, tr, "sed", 0).run())
    out["sim_oracle_flows_per_s"] = len(tr) / _best(lambda: Cluster(sc, tr, "oracle", 0).run())

    lb = SimLB(n_servers=7, n_workers=1, static_weights=[2] * 4 + [4] * 3, mode=1, seed=1,
               publish_interval_ns=250_000_000, flow_capacity=4096)
    d = SimDaemon(lb, "sed", ttl_ns=10**9, seed=2)
    for i in range(200):    # some active flows, as in S1
        lib.mlb_dp_packet(lb.dp, 0, 7919 * i + 1, 10**9, 100, 1)
    k = [0]

    def ticks():
        for _ in range(500):
            k[0] += 1
            lb.timer(10**9 + k[0] * 250_000_000)
            d.tick()

    out["sim_tick_us_per_lb"] = _best(ticks) / 500 * 1e6

    out.update(_env(progress, sc))

    if TRACE400.is_file():
        t0 = time.perf_counter()
        raw = load_trace(TRACE400)
        load_s = time.perf_counter() - t0
        t4 = raw.scaled_to_load(sc.traffic.target_load, sc.capacity_cores, sc.speed)
        progress(f"rate_400: {len(t4)} flows over {t4.span_s:.0f} s simulated "
                 f"(loaded in {load_s:.2f} s)")
        out["sim_trace400_wall_s"] = _best(lambda: Cluster(sc, t4, "sed", 0).run(), 3)
        out["sim_trace400_load_s"] = load_s
    else:
        progress(f"{TRACE400} absent: sim_trace400_wall_s skipped")
    return out


def _random_levels(seed: int):  # noqa: ANN202
    import numpy as np

    rng = np.random.default_rng(seed)
    return lambda xs: [rng.integers(0, 5, x.shape[0]) for x in xs]


def _episode(task: tuple) -> int:
    """One S1 episode with random levels; returns agent steps (worker side)."""
    from marllb.sim.marl_env import MarlEnv

    sc, mean, std, seed = task
    env = MarlEnv(sc, mean, std)
    return len(env.rollout(_random_levels(seed), seed).reward) * env.L


def _env(progress, sc) -> dict[str, float]:  # noqa: ANN001
    from marllb.sim.executor import LocalExecutor
    from marllb.sim.marl_env import feature_stats

    mean, std = feature_stats(sc, [99_999])
    steps = [0]

    def one() -> None:
        steps[0] = _episode((sc, mean, std, 1))

    t = _best(one, 3)
    out = {"env_agent_steps_per_s": steps[0] / t}
    progress(f"env: {steps[0]} agent steps per S1 episode, {out['env_agent_steps_per_s']:.0f}/s")
    pool = LocalExecutor(2)
    try:
        pool.map(_episode, [(sc.model_copy(update={"traffic": sc.traffic.model_copy(
            update={"duration_s": 1.0})}), mean, std, 0)] * 2)      # start the workers
        tasks = [(sc, mean, std, s) for s in range(4)]
        t0 = time.perf_counter()
        total = sum(pool.map(_episode, tasks))
        out["env_agent_steps_per_s_2workers"] = total / (time.perf_counter() - t0)
    finally:
        pool.close()
    return out
