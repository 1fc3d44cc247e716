"""A simulator scenario calibrated from lbd's own trajectory log.

Production tells us, per server and per tick, what this LB sent (new flows/s),
how long its flows took (FCT), and the configured static weight (taken as
the provisioned cores).  It does not tell us each server's real speed: that is
what a capacity change hides.  ``calibrate`` estimates every server's per-core
speed ``v`` by inverting a processor-sharing delay model per server:

    T = (s / v) / (1 - rho**k),   rho = N * lam * s / (k * v)

(``s``: mean job work in unit-core seconds, ``k``: cores = static weight,
``lam``: this LB's flow rate to the server, ``N``: LBs sharing the servers
evenly; exact M/M/1-PS for k = 1, the usual M/M/k-style approximation
otherwise), solved by bisection on the median over the log's records.  FCTs measured at
an LB carry biases of their own (the reservoirs favour recent, hence short,
flows), so by default ``s`` is re-estimated such that the fleet's median
server runs at nominal speed (``anchor_median``): the fit then tells which
servers are slower or faster than their static weight says, which is what a
policy needs to learn from; the scenario keeps the nominal job size ``job_s``
(default: the testbed's 200 ms on a unit core) and the observed flow rate.  The
result is a ``Scenario`` with those servers and the observed total load, so a
policy can be fine-tuned and evaluated in it (counterfactual exploration the
log alone cannot give).  It is an estimate: the report states the fitted
speeds and how many records each rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marllb.daemon.features import FEATURE_NAMES
from marllb.daemon.trajlog import read_log
from marllb.sim.scenario import DEFAULT_SPEED, MEAN_JOB_ITERATIONS, Scenario

COL = {n: i for i, n in enumerate(FEATURE_NAMES)}


class CalibrationError(ValueError):
    """The log cannot support a calibration (too few records, no traffic)."""


@dataclass
class Calibration:
    scenario: Scenario
    speed: np.ndarray        # fitted per-core speed per server (1.0 = nominal)
    cores: np.ndarray
    samples: np.ndarray      # records used per server
    load: float              # offered load over the fitted capacity


def _speed(T: float, lam: float, s: float, k: float) -> float:
    """Per-core speed v solving T = (s/v) / (1 - (lam s / (k v))**k); bisection in log v."""
    lo, hi = 1e-3, 1e3

    def model(v: float) -> float:
        rho = lam * s / (k * v)
        return np.inf if rho >= 1.0 else (s / v) / (1.0 - rho ** k)

    for _ in range(80):
        mid = float(np.sqrt(lo * hi))
        if model(mid) > T:
            lo = mid           # too slow: the server must be faster
        else:
            hi = mid
    return float(np.sqrt(lo * hi))


def calibrate(log_dir: str | Path, *, n_lbs: int = 1, job_s: float | None = None,
              skip_s: float = 10.0, name: str = "calibrated", duration_s: float = 120.0,
              min_records: int = 20, anchor_median: bool = True) -> Calibration:
    """Fit a Scenario to a trajectory log (see the module docstring)."""
    recs = list(read_log(log_dir))
    if not recs:
        raise CalibrationError(f"trajectory log {log_dir}: no records")
    n = recs[-1].obs.shape[0]
    recs = [r for r in recs if r.obs.shape[0] == n]
    t0 = recs[0].t_ns
    recs = [r for r in recs if (r.t_ns - t0) / 1e9 >= skip_s]
    if len(recs) < min_records:
        raise CalibrationError(f"trajectory log {log_dir}: {len(recs)} usable records "
                               f"(need {min_records}); log longer")
    obs = np.stack([r.obs for r in recs]).astype(np.float64)      # (R, n, F)
    job = job_s if job_s is not None else MEAN_JOB_ITERATIONS / DEFAULT_SPEED
    s = job
    k = np.maximum(np.median(obs[:, :, COL["static_weight"]], axis=0), 1.0)
    speed = np.ones(n)
    used = np.zeros(n, dtype=np.int64)
    med_t, med_lam = np.zeros(n), np.zeros(n)
    for j in range(n):
        lam = obs[:, j, COL["new_flow_rate"]] * n_lbs
        T = obs[:, j, COL["fct_mean"]]
        ok = (lam > 0) & (T > 0) & (obs[:, j, COL["up"]] > 0)
        used[j] = int(ok.sum())
        if used[j] >= min_records // 2:
            med_t[j], med_lam[j] = float(np.median(T[ok])), float(np.median(lam[ok]))
    fit = used >= min_records // 2
    if not fit.any():
        raise CalibrationError(f"trajectory log {log_dir}: no server has enough completed "
                               "flows to fit")
    for _ in range(4 if anchor_median else 1):
        for j in np.flatnonzero(fit):
            speed[j] = _speed(med_t[j], med_lam[j], s, float(k[j]))
        if anchor_median:
            s /= float(np.median(speed[fit]))
    total_rate = float(np.median(obs[:, :, COL["new_flow_rate"]].sum(axis=1))) * n_lbs
    cap = float((k * speed).sum())
    load = min(max(total_rate * job / cap, 0.05), 1.5)
    servers = [{"count": 1, "cores": float(k[j]), "speed": round(float(speed[j]), 4),
                "static_weight": float(k[j])} for j in range(n)]
    sc = Scenario.model_validate({
        "name": name, "description": f"calibrated from {log_dir} ({len(recs)} records)",
        "speed": MEAN_JOB_ITERATIONS / job, "warmup_s": 5.0,
        "edge": {"n_lbs": max(1, n_lbs)},
        "traffic": {"target_load": load, "duration_s": duration_s},
        "servers": servers})
    return Calibration(sc, speed, k, used, load)
