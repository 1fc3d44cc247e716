"""The last word on weights before they reach the data plane.

``sanitize`` turns whatever a policy returned into weights the data plane can
use: finite, within ``[w_min, w_max]`` for up servers (so an up server never
gets zero because of the policy alone), ``[0, w_max]`` for drained or down
servers (taking them out is an admin or health decision, made elsewhere), and
never all zero.  A non-finite entry for an up server is replaced by its
(clipped) static weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marllb.daemon._core import lib


def sanitize(weights: Any, features: Any, w_min: float, w_max: float) -> np.ndarray:
    """Finite, bounded, never-all-zero float64 weights, one per server of ``features``."""
    if not (np.isfinite(w_min) and np.isfinite(w_max) and 0.0 < w_min <= w_max):
        raise ValueError(f"need 0 < w_min <= w_max, got w_min={w_min}, w_max={w_max}")
    n = int(features.n)
    try:
        w = np.array(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        w = np.full(n, np.nan)
    if w.shape[0] != n:
        w = np.full(n, np.nan)
    up = np.asarray(features.admin_state) == lib.MLB_ADMIN_UP

    bad = ~np.isfinite(w)
    if bad.any():
        static = np.clip(np.asarray(features.static_weight, dtype=np.float64), w_min, w_max)
        static[np.isnan(static)] = min(max(1.0, w_min), w_max)
        w[bad] = np.where(up[bad], static[bad], 0.0)
    out = np.where(up, np.clip(w, w_min, w_max), np.clip(w, 0.0, w_max))
    if not np.any(out > 0.0):
        out[:] = w_min
    return out


def is_finite_output(weights: Any, n: int) -> bool:
    """True when a policy's raw output is n finite numbers (else: fall back)."""
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return w.shape[0] == n and bool(np.all(np.isfinite(w)))
