"""The last word on weights before they reach the data plane.

Weights are RELATIVE.  Every selection mode of the data plane is
scale-invariant (SED's (active + 1) / w, weighted random, P2C; hash and
least-active ignore weights), so a policy's output is read as a set of ratios
and the daemon only fixes the scale and bounds the ratios:

* each up server's *multiplier* is ``r_i = w_i / static_i`` (a server with a
  static weight of 0 counts the geometric mean of the others as its static);
* when some multiplier lies outside ``[w_min, w_max]`` they are all scaled
  by one common factor, the one closest to 1 that makes every one fit (a
  policy's own scale is kept when it already fits, so in-bound outputs are
  published as they are); only when the ratio asked for between two up
  servers' multipliers exceeds ``w_max / w_min`` is anything clipped, and
  then both ends are clipped symmetrically (in log space);
* the published weight is ``static_i x multiplier_i``.

So ``w_min`` / ``w_max`` (lbd config, defaults 0.1 / 10) are bounds on an up
server's weight RELATIVE TO ITS STATIC WEIGHT after that common scaling: the largest
ratio between two servers' multipliers is ``w_max / w_min`` (100 by default).
A policy that asks for 16x gets 16x; a policy that doubles everything changes
nothing.  An up server never gets zero because of the policy alone (a policy
asking 0 gets the lower bound); drained or down servers get
``[0, w_max x static]`` (taking them out is an admin or health decision, made
elsewhere); the result is never all zero.  A non-finite entry for an up server
is replaced by its static weight times the geometric mean of the
other up servers' multipliers.

``sanitize_weights`` also says whether a bound bit (``clipped``: up servers
whose multiplier the bound changed) and how many entries were non-finite
(``replaced``); the tick record and ``lbctl status`` carry both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from marllb.daemon._core import lib

_TOL = 1e-9   # log-space slack: a value exactly at a bound is not "clipped"


@dataclass(frozen=True)
class Sanitized:
    """The weights to publish and what sanitising had to do to get them."""

    weights: np.ndarray   # (n,) float64, finite, >= 0, not all zero
    clipped: int          # up servers whose multiplier hit w_min / w_max (incl. asked 0)
    replaced: int         # non-finite (or mis-shaped) entries replaced
    asked_ratio: float    # largest / smallest multiplier asked among up servers (>0 ones)


def static_base(features: Any) -> np.ndarray:
    """Static weights, with the geometric mean of the positive ones for a 0 (or 1)."""
    s = np.asarray(features.static_weight, dtype=np.float64).reshape(-1)
    if s.size and s.min() > 0 and s.max() < np.inf:
        return s                              # the usual case: all positive, finite
    pos = np.isfinite(s) & (s > 0)
    fill = float(np.exp(np.mean(np.log(s[pos])))) if pos.any() else 1.0
    return np.where(pos, s, fill)


def _parse(weights: Any, n: int) -> np.ndarray:
    try:
        w = np.array(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return np.full(n, np.nan)
    return w if w.shape[0] == n else np.full(n, np.nan)


def _shift(lr: np.ndarray, lo: float, hi: float) -> float:
    """Common log shift: none if every multiplier fits in [lo, hi], else the
    smallest that makes them fit, else centred between the bounds (both ends
    clipped alike)."""
    if lr.size == 0:
        return 0.0
    a, b = lo - float(lr.min()), hi - float(lr.max())
    return min(max(0.0, a), b) if a <= b else 0.5 * (a + b)


def _in_bounds(w: np.ndarray, s: np.ndarray, up: np.ndarray, w_min: float,
               w_max: float) -> Sanitized | None:
    """The common case, cheaply: every server up and every multiplier finite and
    within [w_min, w_max] -> published as asked.  None otherwise."""
    if not w.size or not up.all():
        return None
    r = w / s
    lo, hi = float(r.min()), float(r.max())    # NaN anywhere -> NaN -> comparisons False
    if not (lo >= w_min and hi <= w_max):
        return None
    return Sanitized(weights=w.copy(), clipped=0, replaced=0, asked_ratio=hi / lo)


def sanitize_weights(weights: Any, features: Any, w_min: float, w_max: float) -> Sanitized:
    """Normalised, ratio-bounded, finite, never-all-zero weights (see module doc)."""
    if not (np.isfinite(w_min) and np.isfinite(w_max) and 0.0 < w_min <= w_max):
        raise ValueError(f"need 0 < w_min <= w_max, got w_min={w_min}, w_max={w_max}")
    n = int(features.n)
    w = _parse(weights, n)
    up = np.asarray(features.admin_state) == lib.MLB_ADMIN_UP
    s = static_base(features)
    fast = _in_bounds(w, s, up, w_min, w_max)
    if fast is not None:
        return fast
    bad = ~np.isfinite(w)
    lo, hi = float(np.log(w_min)), float(np.log(w_max))

    good = up & ~bad & (w > 0)
    lr = np.zeros(n)
    lr[good] = np.log(w[good] / s[good])
    asked = float(np.exp(lr[good].max() - lr[good].min())) if good.any() else 1.0
    # a non-finite up entry stands for "its static weight" at the others' scale
    lr[up & bad] = float(np.mean(lr[good])) if good.any() else 0.0
    finite_up = up & (bad | good)
    c = _shift(lr[finite_up], lo, hi)
    lm = lr + c
    zero_up = up & ~bad & (w <= 0)
    over = finite_up & ((lm < lo - _TOL) | (lm > hi + _TOL))
    lm = np.where(zero_up, lo, np.clip(lm, lo, hi))

    out = np.zeros(n)
    out[up] = s[up] * np.exp(lm[up])
    down_ok = ~up & ~bad
    out[down_ok] = np.clip(w[down_ok] * np.exp(c), 0.0, s[down_ok] * w_max)
    if not np.any(out > 0.0):
        out[:] = s * w_min
    return Sanitized(weights=out, clipped=int(np.count_nonzero(over | zero_up)),
                     replaced=int(np.count_nonzero(bad)), asked_ratio=asked)


def sanitize(weights: Any, features: Any, w_min: float, w_max: float) -> np.ndarray:
    """The weights of ``sanitize_weights`` alone."""
    return sanitize_weights(weights, features, w_min, w_max).weights


def is_finite_output(weights: Any, n: int) -> bool:
    """True when a policy's raw output is n finite numbers (else: fall back)."""
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return False
    return w.shape[0] == n and bool(np.all(np.isfinite(w)))
