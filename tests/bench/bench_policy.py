"""Group `policy`: learned-policy inference and a full daemon tick with qmix (issue 6).

- ``infer_p99_us_qmix_64``: ``QmixPolicy.act(features)`` (inputs, GRU step,
  argmax, weights) for 64 servers, p99 over ticks; median of repeats.
- ``tick_p99_us_64_qmix``: the daemon's whole tick (``TickPipeline.run_once``:
  snapshot with reservoir merge, features, qmix, sanitize, msg_in publish)
  on a 64-server, 4-worker shm region with full reservoirs, p99; median of repeats.

Uses the shipped qmix checkpoint (or a freshly initialised one if none is shipped).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from marllb.daemon import checkpoint as ckpt  # noqa: E402
from marllb.daemon._core import lib  # noqa: E402
from tests.fakedp import FakeDataPlane, unique_name  # noqa: E402

GROUP = "policy"
REPEATS = 5
TICKS = 2000
N = 64


def _checkpoint(tmp: Path) -> str:
    p = ckpt.shipped("qmix")
    if p.is_file():
        return str(p)
    from marllb.sim.train import train

    train("qmix", "small", minutes=1, seed=0, out=tmp, eval_every_s=1e9, eval_seeds=1,
          duration=2, episodes=1, quiet=True)
    return str(tmp / "last")


def _publish(dp: FakeDataPlane, rng: np.random.Generator, i: int) -> None:
    k = lib.MLB_RESERVOIR_K
    dp.publish(active=rng.integers(0, 50, N), new_flows=[i * 10 + j for j in range(N)],
               static_weight=[2.0 if j % 2 else 4.0 for j in range(N)],
               fct={j: rng.exponential(0.3, k) for j in range(N)},
               age={j: rng.exponential(0.2, k) for j in range(N)})


def run(progress) -> dict[str, float]:  # noqa: ANN001
    from marllb.daemon.policies import make_policy
    from marllb.daemon.tick import PolicySlot, TickPipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    path = _checkpoint(tmp)
    rng = np.random.default_rng(0)
    dp = FakeDataPlane.create(unique_name("bpol"), n_servers=N, n_workers=4)
    try:
        # a handful of distinct frames, cycled (publishing costs more than a tick)
        frames = []
        from marllb.daemon.features import FeatureExtractor

        ext = FeatureExtractor()
        import marllb.daemon._core as core

        view = core.ffi.new("mlb_out_view_t *")
        vrng = core.ffi.new("mlb_rng_t *")
        for i in range(8):
            _publish(dp, rng, i)
            dp.region.snapshot_view(view, vrng)
            frames.append(ext.update(view))

        progress("qmix inference, 64 servers")
        infer, infer50 = [], []
        for _ in range(REPEATS):
            pol = make_policy("qmix", checkpoint=path)
            pol.reset(N)
            ts = np.empty(TICKS)
            for t in range(TICKS):
                f = frames[t % len(frames)]
                t0 = time.perf_counter_ns()
                pol.act(f)
                ts[t] = time.perf_counter_ns() - t0
            infer.append(float(np.percentile(ts, 99)) / 1e3)
            infer50.append(float(np.percentile(ts, 50)) / 1e3)

        progress("full daemon tick with qmix, 64 servers x 4 workers")
        tick = []
        for _ in range(REPEATS):
            slot = PolicySlot("qmix", path, "sed")
            pipe = TickPipeline(slot, daemon_gen=12345, seed=1)
            pipe.reset()
            ts = np.empty(TICKS)
            n_ok = 0
            for t in range(TICKS):
                if t % 200 == 0:
                    _publish(dp, rng, 100 + t)
                t0 = time.perf_counter_ns()
                rec = pipe.run_once(dp.region, w_min=0.01, w_max=1000.0, ttl_ns=10**12)
                ts[t] = time.perf_counter_ns() - t0
                if rec is not None and rec.policy_name == "qmix":
                    n_ok += 1
            if n_ok != TICKS:
                raise RuntimeError(f"only {n_ok}/{TICKS} ticks ran qmix")
            tick.append(float(np.percentile(ts, 99)) / 1e3)
    finally:
        dp.close()
    return {
        "infer_p99_us_qmix_64": statistics.median(infer),
        "infer_p50_us_qmix_64": statistics.median(infer50),
        "tick_p99_us_64_qmix": statistics.median(tick),
    }
