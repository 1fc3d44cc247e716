"""Adaptive heuristics: the strong baselines a learned policy must beat.

Both run in the data plane's SED mode (argmin (active + 1) / w), publish
``static x multiplier`` and keep a little per-server state between ticks.
Their constants were tuned on TRAINING scenarios only (S1-S4 and the
generator's training families, ``marllb.sim.scengen``); the numbers are in
``docs/learned-v2-interfaces.md`` and below.

``wrr_latency`` -- gRPC ``weighted_round_robin`` (gRFC A58) adapted to an L4 LB.
    A58 weighs a backend by ``qps / utilization`` from ORCA reports.  An L4 LB
    has no ORCA, but it sees each server's recent flow durations (the FCT
    reservoir of msg_out).  Under processor sharing a flow's duration is its
    size over the service rate it got, so *equal recent durations* means every
    unit of capacity is equally loaded: the weight is ``static x m`` where the
    multiplier ``m`` is driven, in log space, towards making each server's
    recent FCT (decayed mean) equal to the cluster's weighted geometric mean:
    ``log m = (1 - LEAK) log m + GAIN * (log d_ref - log d_i)``, then re-centred
    (geometric mean 1 over the up servers, weighted by weight) and bounded to
    ``[1/M_MAX, M_MAX]``.  The small LEAK is anti-windup: where weights cannot
    equalise FCTs (an idle server with slower cores always has longer flows)
    the multiplier settles at (GAIN / LEAK) x the log FCT gap instead of
    drifting to the bound.  GAIN is small because FCTs lag the weights by about
    one flow duration: 0.05 and more per 250 ms tick oscillates.
    From A58: a server's FCT is trusted only after a *blackout* (``BLACKOUT_S``
    of continuous samples, at least ``MIN_SAMPLES`` of them); it *expires*
    after ``EXPIRY_S`` without a new flow (its samples are old), and an
    untrusted server's multiplier relaxes towards the mean (1) by ``RELAX`` per
    tick -- A58 gives backends without a weight the mean weight.  Smoothing is
    the gain itself (an exponential filter in log space).  The A58 defaults
    (10 s blackout, 3 min expiry, 1 s period) are for RPC fleets; here the
    tick is 250 ms and interference lasts seconds, so they are scaled down.

``prequal`` -- Prequal (NSDI'24) hot/cold lexicographic rule, per tick.
    RIF (requests in flight) = active flows per unit of static weight;
    latency = recent FCT (decayed mean).  A server is *hot* when its RIF is
    above the ``Q_RIF`` quantile of the RIFs seen over the last ``HISTORY``
    ticks (all servers pooled); the paper uses 0.84.  Prequal picks the
    lowest-latency cold replica, else the least-RIF hot one, per request, from
    a few probes.  An L4 LB decides per tick, not per request, and its data
    plane already picks argmin (active + 1) / w per flow.  Adaptation: a cold
    server's weight is ``static x (L_ref / L_i) ** BETA`` (lower latency ->
    more flows before its (active + 1) / w catches up), a hot server's is
    ``static x HOT x`` the smallest cold multiplier (HOT < 1: every hot
    server ranks below every cold one, and gets flows only once the cold
    ones are fuller -- the lexicographic order softened so one tick's flows
    do not herd onto one server).  Multipliers bounded to
    ``[1/M_MAX, M_MAX]``.

Both expose ``multipliers`` (the last tick's ``m``, one per server) so a
residual learned policy can act on top of them:
``base = make_policy("wrr_latency"); base.reset(n); w = base.act(f) * learned``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from marllb.daemon._core import lib
from marllb.daemon.policies.base import Policy, register_policy
from marllb.daemon.sanitize import static_base as _static

_FCT_DMEAN = 3          # column of Features.fct: decayed mean


class _Stateful(Policy):
    """Per-server state keyed on the server ids (a new table resets it)."""

    mode = lib.MLB_MODE_SED

    def reset(self, n_servers: int) -> None:
        super().reset(n_servers)
        self.multipliers = np.ones(n_servers)
        self._ids: np.ndarray | None = None

    def _same_table(self, f: Any) -> bool:
        ids = np.asarray(f.server_id)
        same = self._ids is not None and self._ids.shape == ids.shape \
            and bool(np.array_equal(self._ids, ids))
        if not same:
            self._ids = ids.copy()
            self._on_new_table(f.n)
        return same

    def _on_new_table(self, n: int) -> None:
        self.multipliers = np.ones(n)


@register_policy("wrr_latency")
class WrrLatencyPolicy(_Stateful):
    """A58-style latency-feedback weights: static x m, m equalises recent FCTs."""

    GAIN: ClassVar[float] = 0.01        # log-space step per tick towards equal FCT
    M_MAX: ClassVar[float] = 16.0       # multiplier bound (ratio up to 256 between servers)
    BLACKOUT_S: ClassVar[float] = 1.0   # continuous samples before an FCT is trusted
    EXPIRY_S: ClassVar[float] = 3.0     # no new flow this long: FCT is stale
    MIN_SAMPLES: ClassVar[int] = 8      # live FCT samples needed
    RELAX: ClassVar[float] = 0.1        # untrusted: log m shrinks by this per tick
    LEAK: ClassVar[float] = 0.005       # trusted: log m shrinks by this per tick (anti-windup)

    def _on_new_table(self, n: int) -> None:
        super()._on_new_table(n)
        self._since = np.full(n, -1, dtype=np.int64)     # t_ns samples became usable
        self._last_new = np.full(n, -1, dtype=np.int64)  # t_ns of the last new flow seen

    def reset(self, n_servers: int) -> None:
        super().reset(n_servers)
        self._on_new_table(n_servers)

    def trusted(self, f: Any) -> np.ndarray:
        """Servers whose recent FCT is trusted this tick (updates blackout/expiry)."""
        t = int(f.t_ns)
        up = np.asarray(f.up)
        has = (np.asarray(f.fct_count) >= self.MIN_SAMPLES) & up
        self._since = np.where(has, np.where(self._since < 0, t, self._since), -1)
        fresh = (np.asarray(f.new_flow_rate) > 0) | (np.asarray(f.active) > 0)
        self._last_new = np.where(fresh, t, self._last_new)
        blackout_ok = has & (t - self._since >= int(self.BLACKOUT_S * 1e9))
        not_expired = (self._last_new >= 0) & (t - self._last_new <= int(self.EXPIRY_S * 1e9))
        return blackout_ok & not_expired

    def step(self, f: Any) -> np.ndarray:
        """Update and return the multipliers (one per server; their weight-weighted
        geometric mean over the up servers is 1)."""
        if f.n != self.multipliers.shape[0]:
            self.reset(f.n)
        self._same_table(f)
        ok = self.trusted(f)
        logm = np.log(self.multipliers)
        d = np.asarray(f.fct)[:, _FCT_DMEAN]
        ok &= d > 0
        if ok.sum() >= 2:
            ld = np.log(d[ok])
            share = _static(f)[ok] * self.multipliers[ok]
            ref = float(np.sum(share * ld) / np.sum(share))
            logm[ok] += self.GAIN * (ref - ld)
        logm[~ok] *= 1.0 - self.RELAX
        logm[ok] *= 1.0 - self.LEAK
        up = np.asarray(f.up)
        if up.any():
            share = _static(f)[up] * np.exp(logm[up])
            logm -= float(np.sum(share * logm[up]) / np.sum(share))
        bound = float(np.log(self.M_MAX))
        self.multipliers = np.exp(np.clip(logm, -bound, bound))
        return self.multipliers

    def act(self, features: Any) -> np.ndarray:
        return _static(features) * self.step(features)


@register_policy("prequal")
class PrequalPolicy(_Stateful):
    """Prequal's hot/cold rule turned into per-tick SED weights."""

    Q_RIF: ClassVar[float] = 0.84       # hot above this quantile of recent RIFs (paper: 0.84)
    HISTORY: ClassVar[int] = 8          # ticks of RIF history pooled for the quantile
    HOT: ClassVar[float] = 0.7          # hot: this x the smallest cold multiplier
    BETA: ClassVar[float] = 1.0         # cold: multiplier (L_ref / L_i) ** BETA
    M_MAX: ClassVar[float] = 16.0

    def reset(self, n_servers: int) -> None:
        super().reset(n_servers)
        self._rif_hist: list[np.ndarray] = []
        self.hot = np.zeros(n_servers, dtype=bool)

    def _on_new_table(self, n: int) -> None:
        super()._on_new_table(n)
        self._rif_hist = []

    def step(self, f: Any) -> np.ndarray:
        """Update and return the multipliers (cold: latency-ranked; hot: below all cold)."""
        if f.n != self.multipliers.shape[0]:
            self.reset(f.n)
        self._same_table(f)
        up = np.asarray(f.up)
        m = np.ones(f.n)
        if not up.any():
            self.multipliers, self.hot = m, np.zeros(f.n, dtype=bool)
            return m
        rif = np.asarray(f.active, dtype=np.float64) / _static(f)
        self._rif_hist = [*self._rif_hist[-(self.HISTORY - 1):], rif[up]]
        thresh = float(np.quantile(np.concatenate(self._rif_hist), self.Q_RIF))
        hot = up & (rif > thresh)
        lat = np.asarray(f.fct)[:, _FCT_DMEAN]
        known = up & (np.asarray(f.fct_count) > 0) & (lat > 0)
        ref = float(np.exp(np.mean(np.log(lat[known])))) if known.any() else 1.0
        lat = np.where(known, lat, ref)          # no data yet: the typical latency
        cold_m = (ref / lat) ** self.BETA
        floor = float(cold_m[up & ~hot].min()) if (up & ~hot).any() else 1.0
        m = np.where(hot, self.HOT * floor, cold_m)    # every hot one below every cold one
        self.hot = hot
        self.multipliers = np.clip(m, 1.0 / self.M_MAX, self.M_MAX)
        return self.multipliers

    def act(self, features: Any) -> np.ndarray:
        return _static(features) * self.step(features)
