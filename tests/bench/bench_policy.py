"""Group `policy`: learned-policy inference and a full daemon tick with qmix (issue 6).

- ``infer_p99_us_qmix_64``: ``QmixPolicy.act(features)`` (inputs, GRU step,
  argmax, weights) for 64 servers, p99 over ticks; median of repeats.
- ``tick_p99_us_64_qmix``: the daemon's whole tick (``TickPipeline.run_once``:
  snapshot with reservoir merge, features, qmix, sanitize, msg_in publish)
  on a 64-server, 4-worker shm region with full reservoirs, p99; median of repeats.
- ``tick_p99_us_256_qmix`` (and ``tick_p50_us_256_qmix``): the same on 256
  servers x 16 workers, every reservoir full (TICKS_256 ticks per repeat).

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
from tests.bench.frames import publish_full  # noqa: E402
from tests.fakedp import FakeDataPlane, unique_name  # noqa: E402

GROUP = "policy"
REPEATS = 5
TICKS = 2000
TICKS_256 = 600
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


def qmix_ticks_us(dp: FakeDataPlane, path: str, ticks: int, publish) -> np.ndarray:  # noqa: ANN001
    """Whole-tick durations (us) of a fresh qmix pipeline; ``publish(t)`` every 200 ticks."""
    from marllb.daemon.tick import PolicySlot, TickPipeline

    slot = PolicySlot("qmix", path, "sed")
    pipe = TickPipeline(slot, daemon_gen=12345, seed=1)
    pipe.reset()
    ts = np.empty(ticks)
    n_ok = 0
    for t in range(ticks):
        if t % 200 == 0:
            publish(t)
        t0 = time.perf_counter_ns()
        rec = pipe.run_once(dp.region, w_min=0.01, w_max=1000.0, ttl_ns=10**12)
        ts[t] = time.perf_counter_ns() - t0
        if rec is not None and rec.policy_name == "qmix":
            n_ok += 1
    if n_ok != ticks:
        raise RuntimeError(f"only {n_ok}/{ticks} ticks ran qmix")
    return ts[ticks // 10:] / 1e3


def tick_256_qmix(path: str, progress) -> tuple[float, float]:  # noqa: ANN001
    """(p50, p99) us of the qmix tick at 256 servers x 16 workers, medians of repeats."""
    rng = np.random.default_rng(5)
    dp = FakeDataPlane.create(unique_name("bpol256"), n_servers=256, n_workers=16)
    try:
        p50, p99 = [], []
        for r in range(REPEATS):
            ts = qmix_ticks_us(dp, path, TICKS_256,
                               lambda t: publish_full(dp, rng, 10**10 + t * 250_000_000, t))
            p50.append(float(np.percentile(ts, 50)))
            p99.append(float(np.percentile(ts, 99)))
            progress(f"qmix tick, 256 servers x 16 workers, run {r + 1}/{REPEATS}: "
                     f"p50 {p50[-1]:.0f} us, p99 {p99[-1]:.0f} us")
        return statistics.median(p50), statistics.median(p99)
    finally:
        dp.close()


def run(progress) -> dict[str, float]:  # noqa: ANN001
    from marllb.daemon.lbd import pin_numeric_threads
    from marllb.daemon.policies import make_policy

    pin_numeric_threads()        # the in-process ticks run as lbd runs them

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
            ts = qmix_ticks_us(dp, path, TICKS, lambda t: _publish(dp, rng, 100 + t))
            tick.append(float(np.percentile(ts, 99)))
    finally:
        dp.close()
    p50_256, p99_256 = tick_256_qmix(path, progress)
    return {
        "infer_p99_us_qmix_64": statistics.median(infer),
        "infer_p50_us_qmix_64": statistics.median(infer50),
        "tick_p99_us_64_qmix": statistics.median(tick),
        "tick_p50_us_256_qmix": p50_256,
        "tick_p99_us_256_qmix": p99_256,
    }
