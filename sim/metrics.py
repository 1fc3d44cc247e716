"""SLA and fairness metrics of one simulation result (pure functions), and their plot.

Definitions (also in docs/metrics.md):

- SLA target ``T``: by default ``SLA_FACTOR`` (3) x the mean job's service time
  on an idle unit core, i.e. 3 x the mean of the flows' work in core-seconds
  (``SimResult.work``); settable in seconds.
- ``sla_violation_frac``: share of the scored jobs (arrived after warm-up) that
  did NOT complete within ``T``: completed with JCT > T, rejected, or never
  finished.  A rejected request breaks the SLA as surely as a late one.
- Load per unit of capacity of server j: ``x_j = work served by j / its
  time-averaged capacity (cores)`` (what ``jain_load_over_capacity`` uses).
  ``cv_load_over_capacity`` = population std(x) / mean(x) (0 = perfectly even);
  ``jain_load_over_capacity`` = (sum x)^2 / (n sum x^2) (1 = even, 1/n = one
  server takes all).
- ``util_max_min_ratio``: max_j u_j / min_j u_j with utilisation u_j = x_j /
  run time (the run time cancels, so it is max x / min x); ``inf`` when a
  server served nothing while another did, 1 when none served anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from marllb.sim.cluster import SimResult

SLA_FACTOR = 3.0
METRICS = ("sla_target_ms", "sla_violation_frac", "cv_load_over_capacity",
           "util_max_min_ratio")


def default_sla_target_s(work: np.ndarray) -> float:
    """``SLA_FACTOR`` x the mean job's service time on an idle unit core (s)."""
    w = np.asarray(work, dtype=np.float64)
    w = w[np.isfinite(w)]
    return SLA_FACTOR * float(w.mean()) if w.size else math.nan


def sla_violation_frac(arrival: np.ndarray, done: np.ndarray, target_s: float,
                       warmup_s: float = 0.0) -> float:
    """Share of jobs arrived after ``warmup_s`` not completed within ``target_s``
    (late, rejected or unfinished: ``done`` is NaN for the last two)."""
    arrival = np.asarray(arrival, dtype=np.float64)
    done = np.asarray(done, dtype=np.float64)
    scored = arrival >= warmup_s
    n = int(scored.sum())
    if n == 0:
        return 0.0
    jct = done[scored] - arrival[scored]
    met = np.isfinite(jct) & (jct <= target_s)
    return float((n - int(met.sum())) / n)


def load_over_capacity(server: np.ndarray, work: np.ndarray, done: np.ndarray,
                       capacity_cores: np.ndarray) -> np.ndarray:
    """Per server: work served (core-seconds of completed jobs) / capacity (cores)."""
    cap = np.asarray(capacity_cores, dtype=np.float64)
    served = np.isfinite(np.asarray(done, dtype=np.float64))
    busy = np.bincount(np.asarray(server)[served], weights=np.asarray(work)[served],
                       minlength=len(cap))
    return busy / cap


def jain(x: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2); 1 for all-zero input."""
    x = np.asarray(x, dtype=np.float64)
    s2 = float((x * x).sum())
    return float(x.sum() ** 2 / (len(x) * s2)) if s2 > 0 else 1.0


def cv(x: np.ndarray) -> float:
    """Coefficient of variation, population std / mean; 0 for all-zero input."""
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean()) if x.size else 0.0
    return float(x.std() / m) if m > 0 else 0.0


def max_min_ratio(x: np.ndarray) -> float:
    """max / min; inf when the min is 0 and the max is not, 1 when all are 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or float(x.max()) <= 0:
        return 1.0
    lo = float(x.min())
    return float(x.max() / lo) if lo > 0 else math.inf


def sla_fairness(res: SimResult, sla_target_s: float | None = None) -> dict[str, float]:
    """The SLA and evenness metrics of one run (keys: ``METRICS``)."""
    target = default_sla_target_s(res.work) if sla_target_s is None else float(sla_target_s)
    x = load_over_capacity(res.server, res.work, res.done, res.capacity_cores)
    return {
        "sla_target_ms": target * 1e3,
        "sla_violation_frac": sla_violation_frac(res.arrival, res.done, target, res.warmup_s),
        "cv_load_over_capacity": cv(x),
        "util_max_min_ratio": max_min_ratio(x),
    }


def plot_sla_fairness(results: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Per-policy bars: SLA violation share, Jain's index and CV of load / capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marllb.daemon.fsutil import atomic_file

    names = list(results)

    def col(key: str, scale: float = 1.0) -> list[float]:
        return [scale * float(results[p].get(key, math.nan)) for p in names]

    target = next((results[p].get("sla_target_ms") for p in names), None)
    panels = (("sla_violation_frac", 100.0, "tab:red", "% of jobs",
               "SLA violations" + (f" (JCT > {target:.0f} ms)" if target else "")),
              ("jain_load_over_capacity", 1.0, "tab:blue", "index (1 = even)",
               "Jain's index of load / capacity"),
              ("cv_load_over_capacity", 1.0, "tab:green", "std / mean (0 = even)",
               "CV of load / capacity"))
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 4))
    pos = np.arange(len(names))
    for ax, (key, scale, color, ylabel, title) in zip(axes, panels, strict=True):
        ax.bar(pos, col(key, scale), color=color)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xticks(pos, names, rotation=30, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].set_ylim(0, 1.05)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
