"""Figures for docs/scale.md: 64 LBs x 1,000 servers, measured where one
machine can, projected (in the doc) where it cannot.

The ABI holds at most 256 servers per region, so an LB in front of 1,000
servers runs 4 regions (data-plane cores) of 250 servers, each with its own
daemon tick; flows are hash-partitioned over the 4 (a quarter of the traffic
each).  The cluster is then 4 independent quarters of 64 LBs x 250 servers:
one quarter is simulated here.

scale_region_timer_us       one 250-server region: the data plane's timer with no
                            new msg_in to apply (sweep, publish msg_out), us
scale_region_tick_us_sed    one 250-server region: timer + daemon tick (SED), us
scale_region_tick_us_qmix   the same with the shipped QMIX checkpoint, BLAS
                            limited to 1 thread (threadpoolctl)
scale_region_tick_us_qmix_blas_default  the same with numpy's default BLAS threads
scale_lb_daemon_cpu_pct     one LB's daemon, 4 regions, QMIX, every 250 ms:
                            percent of one core
scale_quarter_flows_per_s   one quarter (64 LBs x 250 servers, load 0.8, SED,
                            in-process daemons), flows per wall second
scale_quarter_wall_per_sim_s  wall seconds per simulated second of that quarter
scale_env_agent_steps_per_s MarlEnv on the quarter (64 agents x 250 servers),
                            random levels, one process
scale_eval_runs_per_s_{1,2}workers_{local,ray}  lbsim eval fan-out: S1 runs
                            (30 s simulated, SED) per wall second with 1 and
                            2 workers, executor already started
"""

from __future__ import annotations

import statistics
import time

GROUP = "scale"
SHARD = 250
N_LBS = 64
TICK_S = 0.25


def _quarter(duration: float):  # noqa: ANN202
    from marllb.sim.scenario import Scenario

    return Scenario.model_validate({
        "name": "scale-quarter", "seed": 3, "tick_ms": 250, "ttl_ms": 1000,
        "edge": {"n_lbs": N_LBS},
        "traffic": {"target_load": 0.8, "duration_s": duration},
        "servers": [{"count": SHARD // 2, "cores": 2, "workers": 32, "backlog": 64},
                    {"count": SHARD // 2, "cores": 4, "workers": 32, "backlog": 64}],
    })


def _region_tick_us(policy: str | None) -> float:
    from marllb.daemon._core import lib
    from marllb.sim.lb import SimDaemon, SimLB

    lb = SimLB(n_servers=SHARD, n_workers=1, static_weights=[2.0, 4.0] * (SHARD // 2),
               mode=lib.MLB_MODE_SED, seed=1, publish_interval_ns=250_000_000,
               flow_capacity=1 << 15)
    d = SimDaemon(lb, policy or "sed", ttl_ns=10**9, seed=2)
    for i in range(SHARD * 8):      # 8 active flows per server
        lib.mlb_dp_packet(lb.dp, 0, 7919 * i + 1, 10**9, 100, 1)
    now = [10**9]

    def tick() -> None:
        now[0] += 250_000_000
        lb.timer(now[0])
        if policy is not None or now[0] < 3 * 10**9:     # None: timer only, after 2 ticks
            d.tick()

    for _ in range(5):
        tick()
    ts = []
    for _ in range(60):
        t0 = time.perf_counter()
        tick()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def _fanout(executor, sc) -> float:  # noqa: ANN001
    from marllb.sim.executor import run_evals

    tasks = [(sc, None, "sed", None, s) for s in range(4)]
    run_evals(tasks[:2], executor)         # warm the workers
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        run_evals(tasks, executor)
        ts.append(time.perf_counter() - t0)
    return len(tasks) / statistics.median(ts)


def run(progress) -> dict[str, float]:  # noqa: ANN001
    import importlib.util

    import numpy as np
    from threadpoolctl import threadpool_limits

    from marllb.sim.cluster import Cluster, scenario_trace
    from marllb.sim.executor import LocalExecutor, RayExecutor
    from marllb.sim.marl_env import MarlEnv, feature_stats
    from marllb.sim.scenario import load_scenario

    out: dict[str, float] = {}
    out["scale_region_timer_us"] = _region_tick_us(None)
    out["scale_region_tick_us_sed"] = _region_tick_us("sed")
    out["scale_region_tick_us_qmix_blas_default"] = _region_tick_us("qmix")
    with threadpool_limits(1):
        out["scale_region_tick_us_qmix"] = _region_tick_us("qmix")
    out["scale_lb_daemon_cpu_pct"] = 100 * 4 * out["scale_region_tick_us_qmix"] * 1e-6 / TICK_S
    progress(f"region tick: sed {out['scale_region_tick_us_sed']:.0f} us, "
             f"qmix {out['scale_region_tick_us_qmix']:.0f} us")

    sc = _quarter(4.0)
    tr = scenario_trace(sc, 0)
    t0 = time.perf_counter()
    Cluster(sc, tr, "sed", 0).run()
    wall = time.perf_counter() - t0
    out["scale_quarter_flows_per_s"] = len(tr) / wall
    out["scale_quarter_wall_per_sim_s"] = wall / tr.span_s
    progress(f"quarter: {len(tr)} flows over {tr.span_s:.1f} s simulated in {wall:.1f} s")

    short = _quarter(2.0)
    mean, std = feature_stats(_quarter(1.0), [1])
    env = MarlEnv(short, mean, std)
    rng = np.random.default_rng(0)
    steps = [0]

    def act(xs: list) -> list:
        steps[0] += len(xs)
        return [rng.integers(0, 5, x.shape[0]) for x in xs]

    t0 = time.perf_counter()
    env.rollout(act, 0, record=False)
    out["scale_env_agent_steps_per_s"] = steps[0] / (time.perf_counter() - t0)
    progress(f"env on the quarter: {steps[0]} agent steps")

    s1 = load_scenario("s1")
    s1 = s1.model_copy(update={"traffic": s1.traffic.model_copy(update={"duration_s": 30.0})})
    for n in (1, 2):
        ex = LocalExecutor(n)
        try:
            out[f"scale_eval_runs_per_s_{n}workers_local"] = _fanout(ex, s1)
        finally:
            ex.close()
    if importlib.util.find_spec("ray") is not None:
        for n in (1, 2):
            ex = RayExecutor(n)
            try:
                out[f"scale_eval_runs_per_s_{n}workers_ray"] = _fanout(ex, s1)
            finally:
                ex.close()
    else:
        progress("ray not installed: the ray fan-out figures are skipped")
    return out
