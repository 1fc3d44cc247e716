"""The msg_in TTL, stated in DATA-PLANE time, and how lbd derives a safe one.

The data plane drops the daemon's weights (and falls back to its static
ones) once ``now_dp - msg_in.dp_t_ns > msg_in.ttl_ns``, where both times are
on the data plane's clock.  That clock need not run at wall speed: a
simulator sped up 4x (``lbsim dataplane --speed 4``) ages the weights four
times faster than lbd's monotonic clock.  So with ``ttl_ms = 0`` (the
default) lbd does not guess: it watches the msg_out frames (their ``t_ns``
against its own monotonic clock) and sets

    ttl = max(4 * r * tick,  2 * (frame_interval + r * tick))

in data-plane ns, where ``r`` is the observed clock rate (data-plane ns per
monotonic ns) and ``frame_interval`` the data plane's publish interval.  The
weights the data plane holds were computed from a frame at most one frame
interval old and are replaced within one tick (r * tick of data-plane time)
plus one data-plane timer period, so this keeps them in force with a 2x
margin while a daemon that stops still loses them within a few ticks.  Until
the clock is known (two frames apart), the TTL is provisional: the same
formula with r = 1 but at least PROVISIONAL_MIN_NS, so the very first
weights do not expire on a fast clock before the second publish.  An
explicit ``ttl_ms`` / ``--ttl-ms`` is used as is (data-plane milliseconds).
"""

from __future__ import annotations

from collections import deque

import numpy as np

WINDOW = 64          # distinct frames the clock estimate spans
MIN_SPAN_NS = 50_000_000   # monotonic span below which the rate is not trusted yet
RATE_BOUNDS = (1e-3, 1e4)  # a clock "rate" outside this is a broken clock: ignore it
PROVISIONAL_MIN_NS = 2_000_000_000   # data-plane ns, only before the rate is known
MAX_TTL_NS = 10_000_000_000   # the data plane's own cap (MLB_DP_TTL_MAX_MS): never ask more


class TtlSpec(int):
    """The TTL a config asks for, in data-plane ns.

    With ``tick_ns`` set the TTL is automatic: the int value is only the
    wall-clock baseline (4 ticks) used until the data-plane clock is known,
    and ``DpClock.resolve`` rescales it."""

    tick_ns: int | None

    def __new__(cls, ns: int, tick_ns: int | None = None) -> TtlSpec:
        obj = super().__new__(cls, int(ns))
        obj.tick_ns = tick_ns
        return obj

    @property
    def auto(self) -> bool:
        return self.tick_ns is not None


class DpClock:
    """Observed data-plane clock: rate against the monotonic clock, frame interval."""

    def __init__(self) -> None:
        self._gen: int | None = None
        self._frames: deque[tuple[int, int]] = deque(maxlen=WINDOW)  # (mono_ns, dp t_ns)
        self.last_ttl_ns = 0

    def reset(self) -> None:
        self._gen = None
        self._frames.clear()

    def observe(self, dp_gen: int, t_ns: int, mono_ns: int) -> None:
        """Record the frame a tick read (repeats of the same frame are ignored)."""
        if dp_gen != self._gen:
            self.reset()
            self._gen = dp_gen
        if self._frames and t_ns <= self._frames[-1][1]:
            if t_ns < self._frames[-1][1]:   # the clock went back: start over
                self._frames.clear()
                self._frames.append((mono_ns, t_ns))
            return
        self._frames.append((mono_ns, t_ns))

    @property
    def rate(self) -> float | None:
        """Data-plane ns per monotonic ns over the window; None until known."""
        if len(self._frames) < 2:
            return None
        (m0, t0), (m1, t1) = self._frames[0], self._frames[-1]
        if m1 - m0 < MIN_SPAN_NS:
            return None
        r = (t1 - t0) / (m1 - m0)
        return r if RATE_BOUNDS[0] <= r <= RATE_BOUNDS[1] else None

    @property
    def frame_interval_ns(self) -> int:
        """Median data-plane time between the distinct frames seen (0 until known)."""
        if len(self._frames) < 2:
            return 0
        t = np.fromiter((f[1] for f in self._frames), dtype=np.int64)
        return int(np.median(np.diff(t)))

    def resolve(self, spec: int) -> int:
        """The TTL to publish now (data-plane ns) for the configured ``spec``."""
        if not isinstance(spec, TtlSpec) or not spec.auto:
            self.last_ttl_ns = int(spec)
            return self.last_ttl_ns
        tick = spec.tick_ns or 0
        r = self.rate
        if r is None:   # not known yet: the wall-clock baseline, generously
            ttl = max(int(spec), 2 * (self.frame_interval_ns + tick), PROVISIONAL_MIN_NS)
        else:
            ttl = max(4 * r * tick, 2 * (self.frame_interval_ns + r * tick))
        self.last_ttl_ns = int(min(ttl, MAX_TTL_NS))
        return self.last_ttl_ns
