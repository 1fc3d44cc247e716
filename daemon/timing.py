"""Per-stage tick timings: a ring of recent samples (p50/p99 on demand) and a
cumulative histogram of whole-tick latency for Prometheus."""

from __future__ import annotations

import bisect

import numpy as np

STAGES = ("snapshot", "features", "policy", "sanitize", "publish", "total")
# tick latency histogram bucket bounds, seconds
BUCKETS = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
           250e-3, 1.0)


class StageTimes:
    """Recent per-stage durations (ns) over the last ``size`` ticks."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.ring = np.zeros((len(STAGES), size), dtype=np.int64)
        self.jitter = np.zeros(size, dtype=np.int64)   # tick start - deadline, ns
        self.starts = np.zeros(size, dtype=np.int64)   # monotonic tick starts, ns
        self.n = 0
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.sum_s = 0.0

    def record(self, durations_ns: list[int], start_ns: int, jitter_ns: int) -> None:
        i = self.n % self.size
        self.ring[:, i] = durations_ns
        self.jitter[i] = jitter_ns
        self.starts[i] = start_ns
        self.n += 1
        total_s = durations_ns[-1] * 1e-9
        self.bucket_counts[bisect.bisect_left(BUCKETS, total_s)] += 1
        self.sum_s += total_s

    def _live(self, arr: np.ndarray) -> np.ndarray:
        return arr[..., : min(self.n, self.size)]

    def percentiles(self) -> dict[str, dict[str, float]]:
        """{stage: {"p50_us", "p99_us", "max_us"}} over the recent window."""
        out: dict[str, dict[str, float]] = {}
        live = self._live(self.ring)
        if live.shape[-1] == 0:
            return {s: {"p50_us": 0.0, "p99_us": 0.0, "max_us": 0.0} for s in STAGES}
        p = np.percentile(live, [50, 99], axis=1) / 1e3
        mx = live.max(axis=1) / 1e3
        for k, s in enumerate(STAGES):
            out[s] = {"p50_us": round(float(p[0, k]), 1), "p99_us": round(float(p[1, k]), 1),
                      "max_us": round(float(mx[k]), 1)}
        return out

    def jitter_us(self) -> dict[str, float]:
        live = self._live(self.jitter)
        if live.shape[0] == 0:
            return {"p50_us": 0.0, "p99_us": 0.0}
        p = np.percentile(live, [50, 99]) / 1e3
        return {"p50_us": round(float(p[0]), 1), "p99_us": round(float(p[1]), 1)}

    def achieved_hz(self) -> float:
        """Ticks per second over the recent window."""
        m = min(self.n, self.size)
        if m < 2:
            return 0.0
        live = self.starts[:m]
        span = int(live.max() - live.min())
        return (m - 1) / (span * 1e-9) if span > 0 else 0.0

    def histogram(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) buckets and the sum, Prometheus style."""
        cum, acc = [], 0
        for b, c in zip((*[repr(x) for x in BUCKETS], "+Inf"), self.bucket_counts, strict=True):
            acc += c
            cum.append((b, acc))
        return cum, self.sum_s
