"""Group `export`: the ONNX export of the qmix policy vs the daemon's numpy inference (issue 17).

Per tick at 64 servers, both from the frame's features to scores, next hidden
state and greedy level (observation matrix and normalisation included):

- ``onnx_infer_p50_us_qmix_64`` / ``onnx_infer_p99_us_qmix_64``: onnxruntime
  (CPU, one intra-op thread) running the exported graph, ``sess.run`` per tick.
- ``numpy_infer_p50_us_qmix_64`` / ``numpy_infer_p99_us_qmix_64``: the daemon's
  ``QmixPolicy.act(features)`` on the same frames (what bench_policy measures).
- ``onnx_max_abs_diff_h_qmix_64``: the largest hidden-state difference between the two
  over all ticks (hidden state carried), a sanity figure beside the timings.

Medians of REPEATS repeats of TICKS ticks.  Needs the [onnx] extra; without it
the group returns no figures and says why.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GROUP = "export"
REPEATS = 5
TICKS = 2000
N = 64


def _publish(dp, rng: np.random.Generator, i: int) -> None:  # noqa: ANN001
    """A 64-server frame with full FCT/age reservoirs and mixed static weights."""
    from marllb.daemon._core import lib

    k = lib.MLB_RESERVOIR_K
    dp.publish(active=rng.integers(0, 50, N), new_flows=[i * 10 + j for j in range(N)],
               static_weight=[2.0 if j % 2 else 4.0 for j in range(N)],
               fct={j: rng.exponential(0.3, k) for j in range(N)},
               age={j: rng.exponential(0.2, k) for j in range(N)})


def _frames(rng: np.random.Generator) -> list:
    import marllb.daemon._core as core
    from marllb.daemon.features import FeatureExtractor
    from tests.fakedp import FakeDataPlane, unique_name

    dp = FakeDataPlane.create(unique_name("bexp"), n_servers=N, n_workers=4)
    try:
        ext = FeatureExtractor()
        view = core.ffi.new("mlb_out_view_t *")
        vrng = core.ffi.new("mlb_rng_t *")
        frames = []
        for i in range(8):
            _publish(dp, rng, i)
            dp.region.snapshot_view(view, vrng)
            frames.append(ext.update(view))
        return frames
    finally:
        dp.close()


def run(progress) -> dict[str, float]:  # noqa: ANN001
    try:
        import onnxruntime as ort

        from marllb.sim.export import export
    except ImportError as e:
        progress(f"skipped: {e} (install the [onnx] extra)")
        return {}
    from marllb.daemon import checkpoint as ckpt
    from marllb.daemon.features import observation_matrix
    from marllb.daemon.policies import make_policy

    path = str(ckpt.shipped("qmix_v1"))
    out = Path(tempfile.mkdtemp(prefix="bench-export-")) / "qmix.onnx"
    export(path, out)
    frames = _frames(np.random.default_rng(0))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])

    progress("onnxruntime vs numpy, 64 servers")
    o50, o99, n50, n99, diffs = [], [], [], [], []
    for _ in range(REPEATS):
        pol = make_policy("qmix_v1", checkpoint=path)
        pol.reset(N)
        h = np.zeros((N, pol.net.hidden), np.float32)
        prev = np.full(N, pol.noop, np.int64)
        to = np.empty(TICKS)
        tn = np.empty(TICKS)
        worst = 0.0
        for t in range(TICKS):
            k = t % len(frames)
            t0 = time.perf_counter_ns()
            f = frames[k]
            q, h, prev, _ = sess.run(None, {"obs": observation_matrix(f),
                                            "up": np.asarray(f.up, bool),
                                            "prev_action": prev, "h": h})
            t1 = time.perf_counter_ns()
            pol.act(frames[k])
            t2 = time.perf_counter_ns()
            to[t] = t1 - t0
            tn[t] = t2 - t1
            if t % 100 == 0:
                worst = max(worst, float(np.abs(pol.h - h).max()))
        o50.append(float(np.percentile(to, 50)) / 1e3)
        o99.append(float(np.percentile(to, 99)) / 1e3)
        n50.append(float(np.percentile(tn, 50)) / 1e3)
        n99.append(float(np.percentile(tn, 99)) / 1e3)
        diffs.append(worst)
    return {
        "onnx_infer_p50_us_qmix_64": statistics.median(o50),
        "onnx_infer_p99_us_qmix_64": statistics.median(o99),
        "numpy_infer_p50_us_qmix_64": statistics.median(n50),
        "numpy_infer_p99_us_qmix_64": statistics.median(n99),
        "onnx_max_abs_diff_h_qmix_64": max(diffs),
    }
