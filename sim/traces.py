"""Request traces: load, generate, write and time-scale.

A trace is two aligned numpy arrays: arrival ``times`` (seconds from the trace
start, non-decreasing) and job ``sizes`` (CPU work in iterations).

Formats read:

* the MARLLB testbed format, tab-separated with header ``time<TAB>query`` and
  ``query`` = ``/dummy.php/?n=<iterations>``;
* a plain CSV with header ``time,size``.

Generators write the testbed format.  Every generator takes a seed (or a
``numpy.random.Generator``) and is repeatable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A job of the testbed's mean size (3.67 M iterations) takes 200 ms on one
# unit core: iterations per second per unit core.
MEAN_JOB_ITERATIONS = 3.67e6
DEFAULT_SPEED = MEAN_JOB_ITERATIONS / 0.2

_QUERY = re.compile(r"^/dummy\.php/\?n=(\d+)$")


class TraceError(ValueError):
    """A malformed trace; the message names the file and line."""


@dataclass(frozen=True)
class Trace:
    times: np.ndarray   # float64 seconds, non-decreasing
    sizes: np.ndarray   # float64 iterations, > 0
    source: str = "<generated>"

    def __post_init__(self) -> None:
        if self.times.shape != self.sizes.shape:
            raise ValueError("times and sizes must have the same length")

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def span_s(self) -> float:
        return float(self.times[-1]) if len(self) else 0.0

    def offered_load(self, capacity_cores: float, speed: float = DEFAULT_SPEED) -> float:
        """Offered work over the span divided by the capacity (unit cores)."""
        if len(self) == 0 or self.span_s <= 0:
            return 0.0
        return float(self.sizes.sum() / speed / self.span_s / capacity_cores)

    def scaled_to_load(self, target: float, capacity_cores: float,
                       speed: float = DEFAULT_SPEED) -> Trace:
        """Stretch or compress arrival times so the offered load is ``target``.

        Sizes are kept; only the arrival rate changes (times multiplied by one
        factor), so the arrival process keeps its shape.
        """
        if not target > 0:
            raise ValueError(f"target load must be > 0, got {target}")
        cur = self.offered_load(capacity_cores, speed)
        if cur <= 0:
            return self
        return Trace(self.times * (cur / target), self.sizes, self.source)

    def truncated(self, duration_s: float) -> Trace:
        k = int(np.searchsorted(self.times, duration_s, side="right"))
        return Trace(self.times[:k], self.sizes[:k], self.source)


# ---------------------------------------------------------------- loading

def load_trace(path: str | Path) -> Trace:
    """Load a testbed TSV or a ``time,size`` CSV; errors name file and line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TraceError(f"{p}: cannot read trace: {e.strerror or e}") from None
    lines = text.splitlines()
    if not lines:
        raise TraceError(f"{p}:1: empty trace (expected a header 'time<TAB>query' "
                         "or 'time,size')")
    header = lines[0].strip().lower()
    if header.replace(" ", "") == "time\tquery" or header.split() == ["time", "query"]:
        testbed = True
    elif header.replace(" ", "") == "time,size":
        testbed = False
    else:
        raise TraceError(f"{p}:1: unknown header {lines[0]!r}: expected 'time<TAB>query' "
                         "(testbed) or 'time,size' (CSV)")
    times: list[float] = []
    sizes: list[float] = []
    prev = -math.inf
    for i, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t") if testbed else line.split(",")
        if testbed and len(parts) == 1:
            parts = line.split()
        if len(parts) != 2:
            want = "'time<TAB>/dummy.php/?n=<iterations>'" if testbed else "'time,size'"
            raise TraceError(f"{p}:{i}: expected 2 fields {want}, got {raw!r}")
        try:
            t = float(parts[0])
        except ValueError:
            raise TraceError(f"{p}:{i}: bad time {parts[0]!r}") from None
        if not math.isfinite(t) or t < 0:
            raise TraceError(f"{p}:{i}: time must be finite and >= 0, got {parts[0]!r}")
        if t < prev:
            raise TraceError(f"{p}:{i}: time {t} goes backwards (previous {prev})")
        prev = t
        if testbed:
            m = _QUERY.match(parts[1].strip())
            if not m:
                raise TraceError(f"{p}:{i}: bad query {parts[1]!r}: expected "
                                 "'/dummy.php/?n=<iterations>'")
            n = float(m.group(1))
        else:
            try:
                n = float(parts[1])
            except ValueError:
                raise TraceError(f"{p}:{i}: bad size {parts[1]!r}") from None
        if not math.isfinite(n) or n <= 0:
            raise TraceError(f"{p}:{i}: size must be finite and > 0, got {parts[1]!r}")
        times.append(t)
        sizes.append(n)
    if not times:
        raise TraceError(f"{p}:{len(lines)}: trace has a header but no requests")
    return Trace(np.asarray(times, dtype=np.float64), np.asarray(sizes, dtype=np.float64),
                 str(p))


def write_trace(trace: Trace, path: str | Path) -> None:
    """Write in the testbed format (sizes rounded to whole iterations, >= 1)."""
    n = np.maximum(1, np.rint(trace.sizes)).astype(np.int64)
    with open(path, "w") as f:
        f.write("time\tquery\n")
        f.writelines(f"{t!r}\t/dummy.php/?n={k}\n" for t, k in zip(trace.times.tolist(),
                                                                     n.tolist(), strict=True))


# ------------------------------------------------------------- generating

ARRIVALS = ("poisson", "bursty", "diurnal")
SIZES = ("exponential", "lognormal", "pareto")


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def poisson_arrivals(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    n_guess = int(rate * duration_s * 1.2 + 10 * math.sqrt(rate * duration_s + 1) + 16)
    gaps = rng.exponential(1.0 / rate, n_guess)
    t = np.cumsum(gaps)
    while t[-1] < duration_s:
        more = np.cumsum(rng.exponential(1.0 / rate, n_guess)) + t[-1]
        t = np.concatenate([t, more])
    return t[t < duration_s]


def bursty_arrivals(rate: float, duration_s: float, rng: np.random.Generator, *,
                    burst_ratio: float = 4.0, on_frac: float = 0.3,
                    mean_period_s: float = 5.0) -> np.ndarray:
    """Two-state MMPP: 'on' periods at a higher rate, 'off' at a lower one.

    The long-run mean rate is ``rate``; on/off durations are exponential with
    means ``on_frac * mean_period_s`` and ``(1 - on_frac) * mean_period_s``;
    the on rate is ``burst_ratio`` times the off rate.
    """
    if not 0 < on_frac < 1 or burst_ratio < 1:
        raise ValueError("bursty: need 0 < on_frac < 1 and burst_ratio >= 1")
    off_rate = rate / (on_frac * burst_ratio + (1 - on_frac))
    on_rate = off_rate * burst_ratio
    out = []
    t = 0.0
    on = rng.random() < on_frac
    while t < duration_s:
        mean = mean_period_s * (on_frac if on else 1 - on_frac)
        d = min(rng.exponential(mean), duration_s - t)
        r = on_rate if on else off_rate
        k = rng.poisson(r * d)
        out.append(np.sort(t + rng.random(k) * d))
        t += d
        on = not on
    return np.concatenate(out) if out else np.empty(0)


def diurnal_arrivals(rate: float, duration_s: float, rng: np.random.Generator, *,
                     amplitude: float = 0.5, period_s: float = 60.0) -> np.ndarray:
    """Sinusoidal rate ``rate * (1 + amplitude * sin(2 pi t / period))`` by thinning."""
    if not 0 <= amplitude < 1:
        raise ValueError("diurnal: need 0 <= amplitude < 1")
    peak = rate * (1 + amplitude)
    cand = poisson_arrivals(peak, duration_s, rng)
    lam = rate * (1 + amplitude * np.sin(2 * np.pi * cand / period_s))
    return cand[rng.random(cand.shape[0]) * peak < lam]


def job_sizes(kind: str, n: int, mean: float, rng: np.random.Generator, *,
              sigma: float = 1.0, alpha: float = 2.5) -> np.ndarray:
    """Job sizes (iterations) with the given mean; lognormal uses ``sigma``,
    Pareto (Lomax-free, classic with x_min) uses shape ``alpha`` > 1."""
    if kind == "exponential":
        s = rng.exponential(mean, n)
    elif kind == "lognormal":
        mu = math.log(mean) - sigma * sigma / 2
        s = rng.lognormal(mu, sigma, n)
    elif kind == "pareto":
        if alpha <= 1:
            raise ValueError("pareto sizes need alpha > 1 for a finite mean")
        xm = mean * (alpha - 1) / alpha
        s = xm * (1 + rng.pareto(alpha, n))
    else:
        raise ValueError(f"unknown size distribution {kind!r}; one of {', '.join(SIZES)}")
    return np.maximum(s, 1.0)


def generate(*, arrivals: str = "poisson", sizes: str = "exponential", rate: float,
             duration_s: float, mean_size: float = MEAN_JOB_ITERATIONS,
             seed: int | np.random.Generator = 0, integer_sizes: bool = True,
             **params: float) -> Trace:
    """Generate a trace.  ``params``: burst_ratio, on_frac, mean_period_s
    (bursty); amplitude, period_s (diurnal); sigma (lognormal); alpha (pareto)."""
    rng = _rng(seed)
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be > 0")
    if arrivals == "poisson":
        t = poisson_arrivals(rate, duration_s, rng)
    elif arrivals == "bursty":
        keys = ("burst_ratio", "on_frac", "mean_period_s")
        t = bursty_arrivals(rate, duration_s, rng, **{k: params[k] for k in keys if k in params})
    elif arrivals == "diurnal":
        keys = ("amplitude", "period_s")
        t = diurnal_arrivals(rate, duration_s, rng,
                             **{k: params[k] for k in keys if k in params})
    else:
        raise ValueError(f"unknown arrival process {arrivals!r}; one of {', '.join(ARRIVALS)}")
    size_kw = {k: params[k] for k in ("sigma", "alpha") if k in params}
    s = job_sizes(sizes, t.shape[0], mean_size, rng, **size_kw)
    if integer_sizes:
        s = np.maximum(1.0, np.rint(s))
    return Trace(t.astype(np.float64), s.astype(np.float64))
