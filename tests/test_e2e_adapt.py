"""End to end: the shipped learned policy adapts to a capacity drop.

Server 0 (2 cores, static weight 2) loses half its capacity 20 simulated
seconds in (offered load 0.6 of the original capacity, 0.8 after the drop).
The real lbd running the shipped qmix checkpoint must lower its weight
relative to the others within a bounded number of ticks, and the run's JCT
must stay better than ECMP's on the same scenario.  (The shipped qmix is a
residual on wrr_latency, which adapts by design at ~1% per tick: the bound is
120 ticks and a 15% drop; the v1 GRU agent was asked for 25% in 60.)"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e import E2E, SPEED, SRC_DAEMON, wait_for

pytestmark = pytest.mark.timeout(180)

DROP_AT_S = 20.0
DURATION_S = 70.0
INTERFERENCE = f"""[servers.interference]
start_s = {DROP_AT_S}
period_s = 10000
on_s = 10000
factor = 0.5
"""
BOUND_TICKS = 120  # 30 simulated seconds at 250 ms
DROP_FACTOR = 0.85


def test_weight_of_a_slowed_server_falls_and_jct_beats_ecmp(tmp_path: Path) -> None:
    from marllb.sim.evaluate import evaluate
    from marllb.sim.scenario import load_scenario

    h = E2E(tmp_path, duration=DURATION_S, interference=INTERFERENCE, load=0.6)
    try:
        h.start_dp()
        h.start_lbd("qmix")
        wait_for(lambda: h.applied()[0] == SRC_DAEMON, what="qmix weights in force")
        samples: list[tuple[float, float]] = []  # (sim time s, w0 / mean(w1, w2))
        while h.dp.poll() is None:
            try:
                f = h.msg_out()
            except Exception:  # noqa: BLE001 - region gone at the end of the run
                break
            w = [f.servers[i].weight for i in range(3)]
            samples.append((f.meta.t_ns / 1e9, w[0] / (0.5 * (w[1] + w[2]))))
            time.sleep(0.25 / SPEED)
        assert h.dp.wait(30) == 0, h.log_text()[-2000:]
        st = h.status()
        assert st["fallback_reason"] is None, st["fallback_reason"]
    finally:
        h.kill(h.lbd, signal.SIGTERM)
        h.close()
    t = np.array([s[0] for s in samples])
    ratio = np.array([s[1] for s in samples])
    before = np.median(ratio[(t > DROP_AT_S - 10) & (t < DROP_AT_S)])
    after = ratio[(t > DROP_AT_S) & (t < DROP_AT_S + BOUND_TICKS * 0.25)]
    print(f"\nw0/mean(w1,w2): before drop {before:.2f}, min within {BOUND_TICKS} ticks "
          f"{after.min() if after.size else float('nan'):.2f}")
    assert after.size and after.min() < DROP_FACTOR * before, (before, after.tolist())

    summary = json.loads((tmp_path / "dp-summary.json").read_text())
    run_jct = summary["policies"]["dataplane"]["jct_mean_ms"]
    sc = load_scenario(h.scenario)
    ecmp, _ = evaluate(sc, ["ecmp"], seeds=1)
    print(f"JCT mean: lbd qmix {run_jct:.0f} ms, ecmp {ecmp['ecmp']['jct_mean_ms']:.0f} ms")
    assert run_jct < ecmp["ecmp"]["jct_mean_ms"], (run_jct, ecmp)
