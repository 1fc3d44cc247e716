"""The residual set network, in numpy: what the daemon runs for learned policy v2.

A policy built on this network never replaces a heuristic, it corrects one:
per server it outputs a log-multiplier ``u`` and the weight served is
``base_weight x exp(u)``, where ``base_weight`` is the adaptive baseline's
(``wrr_latency``).  The output layer starts at exactly zero, so an untrained
network serves the baseline bit for bit, and training can only move away from
it where that pays.

Generalisation is by construction:

* **Permutation-equivariant, any server count.** One shared per-server
  encoder ``phi``; the LB-level context is the mean of ``phi`` over the up
  servers; one shared head ``rho`` sees each server's own input, its
  encoding and the context.  No parameter depends on the number of servers,
  so 1..256 servers (MLB_MAX_SERVERS) are served by the same weights, and
  re-ordering the servers re-orders the output.
* **Scale-free inputs.** Everything a server sees is relative to its LB: its
  flows per unit of weight, FCT, in-progress age and arrival rate as log
  ratios to the LB's mean over up servers, and its baseline / static weight
  as log ratios to their geometric means.  Faster hardware, bigger jobs,
  10x the servers or weights in other units give the same inputs.

Layout (parameter names match the torch module in ``marllb.sim.setnet``)::

    phi:  x_i (D) -> phi1 (H) -> ReLU -> phi2 (H) -> ReLU     = e_i
    ctx:  c = mean_{up j} e_j                                 (zeros if none up)
    rho:  [x_i, e_i, c] -> rho1 (H) -> ReLU -> out (K)

``K = 1`` (continuous, MATD3: ``u = U_MAX tanh(out)``) or ``K = levels``
(QMIX Q-values / SAC logits over ``LOG_LEVELS``, greedy: argmax).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURE_SPEC = "setnet-rel/v1"
ARCH = "setnet-residual/v1"
# the discrete learners' choices of log-multiplier (x0.5 .. x2, log-spaced)
LOG_LEVELS: tuple[float, ...] = tuple(float(np.log(m)) for m in (0.5, 0.71, 1.0, 1.41, 2.0))
NOOP_INDEX = 2
U_MAX = float(np.log(4.0))          # continuous output bound: x0.25 .. x4 on the baseline
PARAM_NAMES = ("phi1.weight", "phi1.bias", "phi2.weight", "phi2.bias",
               "rho1.weight", "rho1.bias", "out.weight", "out.bias")
INPUT_NAMES: tuple[str, ...] = (
    "base_share",        # log(base_i / geomean_up(base))
    "static_share",      # log(static_i / geomean_up(static))
    "sed_rel",           # log(((active_i + 1) / base_i) / mean_up of the same)
    "active_share",      # log((active_i + 1) / mean_up(active + 1))
    "fct_rel",           # log(fct_dmean_i / mean_up), 0 without samples
    "fct_p90_rel",       # log(fct_dp90_i / mean_up)
    "age_rel",           # log(age_dmean_i / mean_up): in-progress flows' age
    "rate_rel",          # log(new_flow_rate_i per unit base weight / mean_up)
    "has_fct",           # 1 when the server has FCT samples
    "up",
    "prev_u",            # the log-multiplier this server got last tick
    "lb_load",           # log1p(mean_up active flows): how loaded the LB is (same for all)
)
N_INPUTS = len(INPUT_NAMES)
CLIP = 4.0


def _log_rel(v: np.ndarray, up: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """log(v_i / mean over up (and valid) servers); 0 where undefined."""
    m = up if valid is None else (up & valid)
    out = np.zeros(v.shape[0])
    if not m.any():
        return out
    ref = float(v[m].mean())
    if not ref > 0.0:
        return out
    floor = 1e-3 * ref
    out = np.log(np.maximum(v, floor) / ref)
    if valid is not None:
        out[~valid] = 0.0
    return out


def _log_share(v: np.ndarray, up: np.ndarray) -> np.ndarray:
    """log(v_i / geometric mean over up servers) of positive values."""
    lv = np.log(np.maximum(v, 1e-9))
    return lv - (float(lv[up].mean()) if up.any() else 0.0)


def server_inputs(features: Any, base: np.ndarray, prev_u: np.ndarray) -> np.ndarray:
    """(n, N_INPUTS) float32 inputs of one LB's servers (scale-free, bounded)."""
    f = features
    n = f.n
    up = np.asarray(f.up, dtype=bool)
    base = np.where(np.isfinite(base) & (base > 0), base, 1e-9).astype(np.float64)
    static = np.maximum(np.asarray(f.static_weight, dtype=np.float64), 1e-9)
    active = np.asarray(f.active, dtype=np.float64)
    has_fct = np.asarray(f.fct_count) > 0
    has_age = np.asarray(f.age_count) > 0
    x = np.empty((n, N_INPUTS), dtype=np.float64)
    x[:, 0] = _log_share(base, up)
    x[:, 1] = _log_share(static, up)
    x[:, 2] = _log_rel((active + 1.0) / base, up)
    x[:, 3] = _log_rel(active + 1.0, up)
    x[:, 4] = _log_rel(f.fct[:, 3], up, has_fct)
    x[:, 5] = _log_rel(f.fct[:, 4], up, has_fct)
    x[:, 6] = _log_rel(f.age[:, 3], up, has_age)
    x[:, 7] = _log_rel(np.asarray(f.new_flow_rate) / base + 1e-12, up)
    x[:, 8] = has_fct
    x[:, 9] = up
    x[:, 10] = prev_u
    x[:, 11] = np.log1p(active[up].mean()) if up.any() else 0.0
    x = np.nan_to_num(x, nan=0.0, posinf=CLIP, neginf=-CLIP)
    return np.clip(x, -CLIP, CLIP).astype(np.float32)


class NumpySetNet:
    """phi -> masked mean -> rho, float32; ``forward`` is the whole inference."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise ValueError(f"set-network parameters missing: {', '.join(missing)}")
        p = {k: np.asarray(params[k], dtype=np.float32) for k in PARAM_NAMES}
        self.w1, self.b1 = np.ascontiguousarray(p["phi1.weight"].T), p["phi1.bias"]
        self.w2, self.b2 = np.ascontiguousarray(p["phi2.weight"].T), p["phi2.bias"]
        self.w3, self.b3 = np.ascontiguousarray(p["rho1.weight"].T), p["rho1.bias"]
        self.w4, self.b4 = np.ascontiguousarray(p["out.weight"].T), p["out.bias"]
        self.in_dim = self.w1.shape[0]
        self.hidden = self.w1.shape[1]
        self.n_out = self.w4.shape[1]
        if (self.w2.shape != (self.hidden, self.hidden)
                or self.w3.shape != (self.in_dim + 2 * self.hidden, self.w3.shape[1])
                or self.w4.shape[0] != self.w3.shape[1]):
            raise ValueError("set-network parameter shapes are inconsistent")

    def forward(self, x: np.ndarray, up: np.ndarray) -> np.ndarray:
        """(n, D) inputs, (n,) up mask -> (n, K) raw outputs."""
        x = np.asarray(x, dtype=np.float32)
        e = np.maximum(np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2, 0.0)
        up = np.asarray(up, dtype=bool)
        c = e[up].mean(axis=0) if up.any() else np.zeros(self.hidden, np.float32)
        z = np.concatenate([x, e, np.broadcast_to(c, e.shape)], axis=1)
        return np.maximum(z @ self.w3 + self.b3, 0.0) @ self.w4 + self.b4


def zero_params(in_dim: int = N_INPUTS, hidden: int = 64, n_out: int = 1,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random encoder/head, zero output layer: the untrained network serves u = 0."""
    rng = np.random.default_rng(seed)

    def lin(o: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        b = 1.0 / np.sqrt(i)
        return (rng.uniform(-b, b, (o, i)).astype(np.float32),
                rng.uniform(-b, b, o).astype(np.float32))

    w1, b1 = lin(hidden, in_dim)
    w2, b2 = lin(hidden, hidden)
    w3, b3 = lin(hidden, in_dim + 2 * hidden)
    return {"phi1.weight": w1, "phi1.bias": b1, "phi2.weight": w2, "phi2.bias": b2,
            "rho1.weight": w3, "rho1.bias": b3,
            "out.weight": np.zeros((n_out, hidden), np.float32),
            "out.bias": np.zeros(n_out, np.float32)}


def log_multiplier(out: np.ndarray, kind: str) -> np.ndarray:
    """Raw outputs -> (n,) log-multipliers: ``continuous`` U_MAX tanh, or the
    greedy level of ``discrete`` scores (ties go to the no-op level)."""
    if kind == "continuous":
        return U_MAX * np.tanh(np.asarray(out, dtype=np.float64)[:, 0])
    q = np.asarray(out, dtype=np.float64)
    a = np.argmax(q, axis=1)
    tie = q[np.arange(q.shape[0]), a] <= q[:, NOOP_INDEX] if q.shape[0] else a.astype(bool)
    a[tie] = NOOP_INDEX
    return np.asarray(LOG_LEVELS)[a]
