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
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

GROUP = "sim"
TRACE400 = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "rate_400.csv"
REPEATS = 5


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
    rare = sc.model_copy(update={"tick_ms": 1e9})
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
