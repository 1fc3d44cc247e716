"""Canary rollout of a policy version between LBs, with an automatic guard.

No coordination service: every lbd reads the same read-only **plan** file
(written by ``lbctl canary start``) and decides for itself whether it runs the
candidate (its ``lb_id`` is in ``plan.lbs``) or the incumbent.  Every lbd
writes its own outcome per window to a **board** directory (one small JSON
file per LB, written atomically); a canary LB reads the incumbents' files to
compare.  In production the board is a shared directory (NFS, or a sidecar
that copies files); in the simulator it is an in-memory dict.

Outcome of one LB in one window: the flow-weighted mean FCT that the LB's own
data plane measured, ``sum_j r_j * dmean_j / sum_j r_j`` over up servers (r_j:
new flows/s, dmean_j: the recency-weighted mean FCT of server j's reservoir),
averaged over the window's ticks; and the same with the decayed p90 as a tail
figure.  LBs of one VIP share the servers and receive statistically alike
traffic from the edge ECMP, so their outcomes are directly comparable.

LBs are not always alike (a skewed edge split gives one LB more flows and a
better-balanced view), so a canary LB first serves the incumbent for
``calibration_windows`` windows (an A/A period) and the guard measures the
bias ``b = mean log(canary_w / mean(incumbents_w))``; then it serves the
candidate.  The guard (candidate LBs only) works on the paired per-window
log-ratio ``d_w = log(candidate_w / mean(incumbents_w)) - b`` with the **mixture sequential
probability ratio test** (mSPRT; Robbins 1970, Johari et al. 2017): for n
windows with mean ``m`` and variance ``v`` (a floor keeps it sane),
``Lambda = sqrt(v / (v + n tau^2)) * exp(n^2 tau^2 (m - mu0)^2 / (2 v (v + n tau^2)))``
is an always-valid likelihood ratio, so it may be checked after every window
without inflating the false-alarm rate ``alpha`` (reject when Lambda >= 1/alpha).

* **roll back** when the test of ``mu0 = log(1 + threshold)`` rejects with
  ``m > mu0`` (worse by more than ``threshold``, with confidence); also at once
  when the candidate falls back (fails to load, non-finite output), and when
  ``gross_windows`` windows in a row are worse by more than ``gross_ratio``
  (a bound on how long a disastrous candidate can run);
* **promote** when the test of ``mu0 = -log(1 + promote_margin)`` rejects
  with ``m < mu0`` (better by more than the margin, with confidence);
  incumbent LBs with ``auto_promote`` then switch to it;
* after ``max_windows`` without a verdict the incumbent is kept ("inconclusive").

Nothing here trains or blocks: the guard's cost per tick is a few numpy sums.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from marllb.daemon.fsutil import atomic_write_json

PLAN_FORMAT = 1
RUNNING, ROLLED_BACK, PROMOTED, INCONCLUSIVE = "running", "rolled_back", "promoted", "inconclusive"


class PlanError(ValueError):
    """A canary plan file that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class CanaryPlan:
    candidate: str                 # policy spec: NAME, NAME=CHECKPOINT or NAME@vN
    incumbent: str
    lbs: tuple[str, ...]           # lb ids that run the candidate
    threshold: float = 0.05        # "worse by more than 5%" rolls back
    promote_margin: float = 0.03   # "better by more than 3%" promotes
    alpha: float = 0.05            # false-alarm rate of each sequential test
    tau: float = 0.1               # mixture scale: the effect size the test is tuned for
    window_s: float = 10.0
    min_windows: int = 10          # windows compared before a promotion
    min_windows_rollback: int = 4  # ... before a statistical rollback (rolling back is cheap)
    warmup_windows: int = 2        # windows ignored after (re)start: reservoirs refill
    calibration_windows: int = 6   # A/A windows (canary serves the incumbent) to measure bias
    max_windows: int = 300
    gross_ratio: float = 1.5       # a window this much worse counts as gross
    gross_windows: int = 3         # ... and this many in a row roll back at once
    auto_promote: bool = True
    started_unix: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str = "plan") -> CanaryPlan:
        if not isinstance(d, dict):
            raise PlanError(f"{where}: not a JSON object")
        if d.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise PlanError(f"{where}: format {d.get('format')!r}, expected {PLAN_FORMAT}")
        for key in ("candidate", "incumbent"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise PlanError(f"{where}: {key} must be a policy name (got {d.get(key)!r})")
        lbs = d.get("lbs")
        if not (isinstance(lbs, list) and lbs and all(isinstance(x, str) and x for x in lbs)):
            raise PlanError(f"{where}: lbs must be a non-empty list of lb ids (got {lbs!r})")
        kw: dict[str, Any] = {}
        bounds = {"threshold": (0.0, 10.0), "promote_margin": (0.0, 10.0),
                  "alpha": (1e-6, 0.5), "tau": (1e-3, 10.0), "window_s": (0.05, 3600.0),
                  "gross_ratio": (1.0, 1e6)}
        for key, (lo, hi) in bounds.items():
            if key in d:
                v = d[key]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or \
                        not math.isfinite(v) or not lo <= v <= hi:
                    raise PlanError(f"{where}: {key} = {v!r} is not in [{lo}, {hi}]")
                kw[key] = float(v)
        for key, (lo, hi) in {"min_windows": (1, 10**6), "min_windows_rollback": (2, 10**6),
                              "warmup_windows": (0, 10**6),
                              "calibration_windows": (0, 10**6), "max_windows": (1, 10**7),
                              "gross_windows": (1, 10**6), "started_unix": (0, 2**63)}.items():
            if key in d:
                v = d[key]
                if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                    raise PlanError(f"{where}: {key} = {v!r} is not an integer in [{lo}, {hi}]")
                kw[key] = v
        if "auto_promote" in d:
            if not isinstance(d["auto_promote"], bool):
                raise PlanError(f"{where}: auto_promote must be true or false")
            kw["auto_promote"] = d["auto_promote"]
        return cls(candidate=d["candidate"], incumbent=d["incumbent"], lbs=tuple(lbs), **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lbs"] = list(self.lbs)
        d["format"] = PLAN_FORMAT
        return d


def load_plan(path: str | Path) -> CanaryPlan:
    p = Path(path)
    try:
        raw = p.read_bytes()
        d = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise PlanError(f"canary plan {p}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise PlanError(f"canary plan {p}: not valid UTF-8 JSON: {e}") from None
    return CanaryPlan.from_dict(d, where=f"canary plan {p}")


def write_plan(path: str | Path, plan: CanaryPlan) -> Path:
    return atomic_write_json(path, plan.to_dict(), mode=0o644)


# -- the sequential test ----------------------------------------------------------

VAR_FLOOR = 1e-4   # (1% noise)^2: keeps Lambda finite on identical windows


def long_run_var(x: np.ndarray, lags: int = 4) -> float:
    """Long-run variance of the per-window terms (Newey-West, Bartlett kernel).

    Consecutive windows share flows, and the reservoirs' decayed statistics
    span several seconds, so per-window outcomes are positively correlated;
    treating them as independent makes a sequential test overconfident.  The
    Newey-West estimate adds the first ``lags`` autocovariances (weights
    1 - l/(lags+1)); negative totals are floored at the plain variance."""
    n = x.shape[0]
    c = x - x.mean()
    g0 = float(c @ c) / max(n - 1, 1)
    v = g0
    for lag in range(1, min(lags, n - 2) + 1):
        v += 2.0 * (1.0 - lag / (lags + 1)) * float(c[lag:] @ c[:-lag]) / max(n - 1, 1)
    return max(v, g0, VAR_FLOOR)


def msprt_lambda(x: np.ndarray, mu0: float, tau: float) -> float:
    """The normal-mixture SPRT statistic of samples ``x`` against mean ``mu0``."""
    n = int(x.shape[0])
    if n < 2:
        return 0.0
    m = float(x.mean())
    v = long_run_var(x)
    t2 = tau * tau
    log_l = 0.5 * math.log(v / (v + n * t2)) + \
        (n * n * t2 * (m - mu0) ** 2) / (2.0 * v * (v + n * t2))
    return math.exp(min(log_l, 700.0))


def lb_outcome(active: np.ndarray, rate: np.ndarray, fct: np.ndarray, up: np.ndarray
               ) -> tuple[float, float] | None:
    """(flow-weighted mean FCT, flow-weighted decayed p90) of one tick, seconds; None if idle.

    ``fct`` is the Features (n, 5) FCT table: mean, p90, std, dmean, dp90."""
    del active
    r = np.where(up & (fct[:, 3] > 0), rate, 0.0)
    tot = float(r.sum())
    if tot <= 0.0:
        return None
    return float(r @ fct[:, 3]) / tot, float(r @ fct[:, 4]) / tot


# -- the board: one outcome file per LB ----------------------------------------------------

class Board(Protocol):
    def write(self, lb: str, entry: dict[str, Any]) -> None: ...
    def read(self, lb: str) -> dict[str, Any] | None: ...
    def lbs(self) -> list[str]: ...


class MemoryBoard:
    """The in-process board (simulator, tests)."""

    def __init__(self) -> None:
        self._d: dict[str, dict[str, Any]] = {}

    def write(self, lb: str, entry: dict[str, Any]) -> None:
        self._d[lb] = json.loads(json.dumps(entry))

    def read(self, lb: str) -> dict[str, Any] | None:
        return self._d.get(lb)

    def lbs(self) -> list[str]:
        return sorted(self._d)


class DirBoard:
    """A directory of ``<lb_id>.json`` files, each written atomically by its own lbd."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, lb: str, entry: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / f"{lb}.json", entry, mode=0o644, indent=None)

    def read(self, lb: str) -> dict[str, Any] | None:
        try:
            d = json.loads((self.path / f"{lb}.json").read_text())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def lbs(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))


# -- per-LB controller -------------------------------------------------------------------

@dataclass
class Decision:
    t_ns: int                      # data-plane time of the tick that decided
    window: int
    verdict: str
    reason: str
    d_mean: float = float("nan")
    lam: float = float("nan")
    n: int = 0


@dataclass
class _Window:
    key: int = -1
    serving: str = ""
    sum_mean: float = 0.0
    sum_p90: float = 0.0
    ticks: int = 0


@dataclass
class CanaryGuard:
    """The decision state of one LB under one plan (pure logic; no I/O but the board)."""

    plan: CanaryPlan
    lb: str
    board: Board
    role: str = field(init=False)           # "candidate" or "incumbent"
    verdict: str = field(init=False, default=RUNNING)
    reason: str = field(init=False, default="")
    history: list[tuple[int, float, float, str]] = field(init=False, default_factory=list)
    d: list[float] = field(init=False, default_factory=list)
    decisions: list[Decision] = field(init=False, default_factory=list)
    _win: _Window = field(init=False, default_factory=_Window)
    _pending: list[int] = field(init=False, default_factory=list)
    _done_keys: set[int] = field(init=False, default_factory=set)
    _gross_run: int = field(init=False, default=0)
    _closed: int = field(init=False, default=0)
    calib: list[float] = field(init=False, default_factory=list)
    bias: float = field(init=False, default=0.0)
    _t_ns: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.role = "candidate" if self.lb in self.plan.lbs else "incumbent"

    @property
    def calibrating(self) -> bool:
        return self.role == "candidate" and len(self.calib) < self.plan.calibration_windows

    # which policy this LB should serve now
    @property
    def serving(self) -> str:
        if self.role == "candidate":
            if self.calibrating:
                return self.plan.incumbent
            return self.plan.candidate if self.verdict in (RUNNING, PROMOTED) \
                else self.plan.incumbent
        return self.plan.candidate if self.verdict == PROMOTED else self.plan.incumbent

    def observe(self, t_ns: int, outcome: tuple[float, float] | None,
                candidate_failed: str | None = None) -> Decision | None:
        """Feed one tick; returns a Decision when the verdict changes."""
        self._t_ns = int(t_ns)
        if self.role == "candidate" and self.verdict == RUNNING and candidate_failed:
            return self._decide(self._win.key, ROLLED_BACK,
                                f"candidate fell back: {candidate_failed}")
        key = int(t_ns // int(self.plan.window_s * 1e9))
        w = self._win
        if key != w.key:
            if w.key >= 0 and w.ticks > 0:
                self._close(w)
            self._win = w = _Window(key=key, serving=self.serving)
        elif w.serving != self.serving:
            w.serving = "mixed"        # the policy changed inside this window: not compared
        if outcome is not None:
            w.sum_mean += outcome[0]
            w.sum_p90 += outcome[1]
            w.ticks += 1
        return self._evaluate()

    def _close(self, w: _Window) -> None:
        self.history.append((w.key, w.sum_mean / w.ticks, w.sum_p90 / w.ticks, w.serving))
        del self.history[:-64]
        self._closed += 1
        self.board.write(self.lb, self.entry())
        if self.role == "candidate" and self._closed > self.plan.warmup_windows:
            self._pending.append(w.key)

    def entry(self) -> dict[str, Any]:
        return {"lb": self.lb, "role": self.role, "serving": self.serving,
                "verdict": self.verdict, "reason": self.reason,
                "windows": [list(h) for h in self.history], "updated_unix": time.time()}

    def _incumbent_mean(self, key: int) -> float | None:
        vals = []
        for lb in self.board.lbs():
            if lb in self.plan.lbs:
                continue
            e = self.board.read(lb)
            if not e or e.get("serving") != self.plan.incumbent:
                continue
            for k, mean, _p90, serving in e.get("windows", []):
                if k == key and mean > 0 and serving == self.plan.incumbent:
                    vals.append(mean)
        return float(np.mean(vals)) if vals else None

    def _evaluate(self) -> Decision | None:
        if self.role == "incumbent":
            return self._follow()
        if self.verdict != RUNNING:
            return None
        mine = {k: (m, s) for k, m, _, s in self.history}
        latest = max(mine) if mine else -1
        still = []
        for key in self._pending:
            inc = self._incumbent_mean(key)
            if inc is None:
                if latest - key < 3:      # incumbents may publish a little later
                    still.append(key)
                continue
            m, serving = mine.get(key, (0.0, ""))
            if key in self._done_keys or m <= 0:
                continue
            self._done_keys.add(key)
            if serving == self.plan.incumbent and self.calibrating:
                self.calib.append(math.log(m / inc))
                if not self.calibrating:
                    self.bias = float(np.mean(self.calib))
                    self._pending = []
                    return None
            elif serving == self.plan.candidate:
                self.d.append(math.log(m / inc) - self.bias)
                dec = self._test()
                if dec is not None:
                    return dec
        self._pending = still
        return None

    def _test(self) -> Decision | None:
        p = self.plan
        if not self.d:
            return None
        last = self.d[-1]        # _test runs once per new compared window
        self._gross_run = self._gross_run + 1 if last > math.log(p.gross_ratio) else 0
        key = self.history[-1][0] if self.history else -1
        if self._gross_run >= p.gross_windows:
            return self._decide(key, ROLLED_BACK,
                                f"{self._gross_run} windows in a row worse by more than "
                                f"{(p.gross_ratio - 1) * 100:.0f}%")
        x = np.asarray(self.d)
        n = x.shape[0]
        if n < min(p.min_windows, p.min_windows_rollback):
            return None
        m = float(x.mean())
        worse0 = math.log1p(p.threshold)
        lam_w = msprt_lambda(x, worse0, p.tau)
        if n >= p.min_windows_rollback and m > worse0 and lam_w >= 1.0 / p.alpha:
            return self._decide(key, ROLLED_BACK,
                                f"worse than the incumbent by {math.expm1(m) * 100:.1f}% "
                                f"(> {p.threshold * 100:.0f}%) over {n} windows, "
                                f"mSPRT Lambda={lam_w:.0f} >= 1/alpha", m, lam_w, n)
        better0 = -math.log1p(p.promote_margin)
        lam_b = msprt_lambda(x, better0, p.tau)
        if n >= p.min_windows and m < better0 and lam_b >= 1.0 / p.alpha:
            return self._decide(key, PROMOTED,
                                f"better than the incumbent by {-math.expm1(m) * 100:.1f}% "
                                f"over {n} windows, mSPRT Lambda={lam_b:.0f} >= 1/alpha",
                                m, lam_b, n)
        if n >= p.max_windows:
            return self._decide(key, INCONCLUSIVE,
                                f"no verdict after {n} windows (mean {math.expm1(m) * 100:+.1f}%);"
                                " the incumbent is kept", m, max(lam_w, lam_b), n)
        return None

    def _follow(self) -> Decision | None:
        """Incumbent LBs switch to a candidate the canary LBs promoted (auto_promote)."""
        if self.verdict == PROMOTED or not self.plan.auto_promote:
            return None
        for lb in self.plan.lbs:
            e = self.board.read(lb)
            if e and e.get("verdict") == PROMOTED:
                key = self.history[-1][0] if self.history else -1
                return self._decide(key, PROMOTED, f"canary {lb} promoted "
                                    f"{self.plan.candidate}: {e.get('reason', '')}")
        return None

    def _decide(self, key: int, verdict: str, reason: str, d_mean: float = float("nan"),
                lam: float = float("nan"), n: int = 0) -> Decision:
        self.verdict, self.reason = verdict, reason
        dec = Decision(self._t_ns, key, verdict, reason, d_mean, lam, n)
        self.decisions.append(dec)
        self.board.write(self.lb, self.entry())
        return dec

    def status(self) -> dict[str, Any]:
        x = np.asarray(self.d) if self.d else np.zeros(0)
        return {"lb": self.lb, "role": self.role, "verdict": self.verdict,
                "reason": self.reason, "serving": self.serving,
                "candidate": self.plan.candidate, "incumbent": self.plan.incumbent,
                "windows_compared": int(x.shape[0]), "calibrating": self.calibrating,
                "bias_pct": float(math.expm1(self.bias)) * 100,
                "candidate_vs_incumbent_pct": (float(math.expm1(x.mean())) * 100
                                               if x.shape[0] else None),
                "last_window": (list(self.history[-1][1:3]) if self.history else None)}


# -- a PolicySlot-compatible wrapper for the tick pipeline -----------------------------------

class CanarySlot:
    """Serves the plan's incumbent or candidate policy slot, as the guard says.

    Duck-types ``marllb.daemon.tick.PolicySlot`` (``act``, ``reset``, ``name``,
    ...).  ``make_slot(spec)`` builds a PolicySlot for a policy spec (resolving
    ``NAME@vN`` through the checkpoint store); it is called once per spec."""

    def __init__(self, guard: CanaryGuard, make_slot: Callable[[str], Any],
                 log: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.guard = guard
        self._make = make_slot
        self._slots: dict[str, Any] = {}
        self._log = log or (lambda event, kw: None)
        self._n_servers = -1
        self._slot(guard.serving)

    def _slot(self, spec: str) -> Any:
        if spec not in self._slots:
            self._slots[spec] = self._make(spec)
        return self._slots[spec]

    @property
    def active(self) -> Any:
        return self._slot(self.guard.serving)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("guard",):
            raise AttributeError(name)
        return getattr(self.active, name)

    @property
    def n_servers(self) -> int:
        return self._n_servers

    @n_servers.setter
    def n_servers(self, v: int) -> None:
        self._n_servers = v
        for s in self._slots.values():
            s.n_servers = v

    def reset(self, n_servers: int) -> None:
        self._n_servers = n_servers
        for s in self._slots.values():
            s.reset(n_servers)

    def act(self, f: Any) -> tuple[np.ndarray, Any, str | None]:
        g = self.guard
        outcome = lb_outcome(f.active, f.new_flow_rate, f.fct, f.up)
        cand = self._slots.get(g.plan.candidate)
        failed = None
        if g.role == "candidate" and g.serving == g.plan.candidate and cand is not None:
            failed = cand.load_error or cand.fallback_reason
        before = g.serving
        dec = g.observe(int(f.t_ns), outcome, failed)
        if dec is not None:
            self._log("canary_decision", {"lb": g.lb, "verdict": dec.verdict,
                                          "reason": dec.reason, "window": dec.window})
        slot = self._slot(g.serving)
        if g.serving != before:
            slot.reset(f.n)
        return slot.act(f)
