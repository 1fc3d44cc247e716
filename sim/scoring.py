"""Scoring what users feel: JCT with rejected flows counted, CIs and verdicts.

Per run (``score_run``), over the scored flows (arrival >= warm-up):

* ``ujct_*`` -- *user* JCT: a completed flow counts its JCT; a rejected (or
  never finished) flow counts ``REJECT_PENALTY_S`` (10 s, 50x the mean job:
  a failed request is worth a client's retry/timeout budget).  A policy can
  therefore never win by rejecting flows: a reject costs more than any flow
  that completes within 10 s.
* ``jct_*`` -- the old metric, completed flows only, kept beside it;
* ``rejected_frac`` / ``rejected`` -- reported beside, always.

Across seeds (``aggregate``): the mean and the half-width of a 95% Student-t
confidence interval (``ci95``) of each metric, from >= 5 seeds.

Verdict (``verdicts``): per case (a shipped scenario or a generator family),
each non-baseline, non-oracle policy against the BEST non-oracle baseline
(``BASELINES``, the adaptive ones included), chosen per metric by the
geometric mean over runs.  The change is the mean over runs of the paired
per-run ratio (policy / best) - 1, with its 95% CI: the runs of a family are
different clusters, and a ratio lets each count alike.  Goals (issue 10):
where static weights are right, within +2% on both ``ujct_mean_ms`` and
``ujct_p99_ms``; where they are wrong or capacity changes, at least 5% better
on both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

REJECT_PENALTY_S = 10.0
BASELINES: tuple[str, ...] = ("ecmp", "wcmp", "sed", "lsq", "p2c", "wrr_latency", "prequal")
ORACLE = "oracle"
GOAL_RIGHT = 0.02        # static weights right: at most 2% worse than the best baseline
GOAL_WRONG = -0.05       # wrong / capacity change: at least 5% better
VERDICT_KEYS = ("ujct_mean_ms", "ujct_p99_ms")
KEYS = ("ujct_mean_ms", "ujct_p99_ms", "jct_mean_ms", "jct_p99_ms", "rejected_frac",
        "rejected", "flows")

# two-sided 95% Student-t quantiles by degrees of freedom (1..30); normal beyond
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
        2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
        2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def user_jct_s(res: Any, penalty_s: float = REJECT_PENALTY_S) -> np.ndarray:
    """Per scored flow: its JCT (s) if it completed, else ``penalty_s``."""
    scored = np.asarray(res.arrival) >= res.warmup_s
    done = np.asarray(res.done)[scored]
    jct = done - np.asarray(res.arrival)[scored]
    return np.where(np.isfinite(done), jct, penalty_s)


def score_run(res: Any, penalty_s: float = REJECT_PENALTY_S) -> dict[str, float]:
    """The per-run metrics (see module doc) of one ``SimResult``."""
    u = user_jct_s(res, penalty_s) * 1e3
    scored = np.asarray(res.arrival) >= res.warmup_s
    done = np.asarray(res.done)[scored]
    ok = np.isfinite(done)
    j = (done[ok] - np.asarray(res.arrival)[scored][ok]) * 1e3
    rejected = int(np.count_nonzero(~ok))

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q)) if x.size else math.nan

    return {
        "ujct_mean_ms": float(u.mean()) if u.size else math.nan,
        "ujct_p99_ms": pct(u, 99),
        "jct_mean_ms": float(j.mean()) if j.size else math.nan,
        "jct_p99_ms": pct(j, 99),
        "rejected_frac": rejected / u.size if u.size else 0.0,
        "rejected": float(rejected),
        "flows": float(u.size),
    }


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t CI); half-width NaN for < 2 values."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    dof = x.size - 1
    t = _T95[dof - 1] if dof <= len(_T95) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def aggregate(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean, 95% CI half-width and the per-seed values."""
    out: dict[str, dict[str, Any]] = {}
    for k in KEYS:
        vals = [float(r[k]) for r in runs if k in r]
        m, h = ci95(vals)
        out[k] = {"mean": m, "ci95": h, "values": vals}
    return out


def _gmean(vals: Sequence[float]) -> float:
    x = np.asarray([v for v in vals if np.isfinite(v) and v > 0], dtype=np.float64)
    return float(np.exp(np.mean(np.log(x)))) if x.size else math.nan


def best_baseline(policies: dict[str, dict[str, dict[str, Any]]], key: str,
                  baselines: Sequence[str] = BASELINES) -> str | None:
    """The baseline with the lowest geometric mean over runs of ``key`` (the
    runs of a family are different clusters: a geometric mean lets each run
    count alike); None if none ran."""
    cands = [(g, b) for b in baselines if b in policies
             and np.isfinite(g := _gmean(policies[b][key]["values"]))]
    return min(cands)[1] if cands else None


def compare(pol: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]],
            key: str) -> dict[str, float]:
    """Change of ``key`` vs a baseline: ``rel`` = mean over runs of the paired
    per-run ratio - 1 (every run counts alike), its 95% CI, and the change of
    the plain means (``rel_of_means``)."""
    pm, bm = pol[key]["mean"], base[key]["mean"]
    pv, bv = pol[key]["values"], base[key]["values"]
    ratios = [p / b - 1.0 for p, b in zip(pv, bv, strict=False) if b > 0]
    m, h = ci95(ratios)
    return {"rel": m, "ci95": h,
            "rel_of_means": pm / bm - 1.0 if bm and np.isfinite(bm) else math.nan}


def verdicts(policies: dict[str, dict[str, dict[str, Any]]], static_right: bool,
             baselines: Sequence[str] = BASELINES) -> dict[str, dict[str, Any]]:
    """Each policy vs the best baseline per verdict metric, with the goal check.

    Baselines get their own row (their distance to the best), marked
    ``goal: None``; the oracle is never judged."""
    goal = GOAL_RIGHT if static_right else GOAL_WRONG
    out: dict[str, dict[str, Any]] = {}
    best = {k: best_baseline(policies, k, baselines) for k in VERDICT_KEYS}
    for name, pol in policies.items():
        if name == ORACLE:
            continue
        row: dict[str, Any] = {}
        ok = True
        for k in VERDICT_KEYS:
            b = best[k]
            if b is None:
                ok = False
                continue
            c = compare(pol, policies[b], k)
            row[k] = {"vs": b, **c}
            ok = ok and np.isfinite(c["rel"]) and c["rel"] <= goal + 1e-12
        judged = name not in baselines
        row["goal"] = (f"<= {goal:+.0%} vs best baseline on mean and p99 user JCT"
                       if judged else None)
        row["met"] = bool(ok) if judged else None
        out[name] = row
    return out


def fmt_ci(m: float, h: float, nd: int = 1) -> str:
    if not np.isfinite(m):
        return "n/a"
    return f"{m:.{nd}f} ± {h:.{nd}f}" if np.isfinite(h) else f"{m:.{nd}f}"


def case_table(case: dict[str, Any]) -> str:
    """Markdown table of one case (scenario or family) of a suite report."""
    pols = case["policies"]
    ver = case.get("verdicts", {})
    lines = [f"### {case['name']} ({case['tag']}; {case['n_runs']} runs)", "",
             "| policy | user JCT mean (ms) | user JCT p99 (ms) | rejected | "
             "JCT mean, completed (ms) | vs best: mean | vs best: p99 | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, m in pols.items():
        v = ver.get(name, {})

        def rel(k: str, v: dict = v) -> str:
            c = v.get(k)
            if not c or not np.isfinite(c["rel"]):
                return "—"
            h = f" ± {100 * c['ci95']:.1f}%" if np.isfinite(c["ci95"]) else ""
            return f"{100 * c['rel']:+.1f}%{h} ({c['vs']})"

        verdict = "—" if v.get("met") is None else ("**met**" if v["met"] else "not met")
        lines.append(
            f"| {name} | {fmt_ci(m['ujct_mean_ms']['mean'], m['ujct_mean_ms']['ci95'])} | "
            f"{fmt_ci(m['ujct_p99_ms']['mean'], m['ujct_p99_ms']['ci95'])} | "
            f"{100 * m['rejected_frac']['mean']:.2f}% | "
            f"{fmt_ci(m['jct_mean_ms']['mean'], m['jct_mean_ms']['ci95'])} | "
            f"{rel('ujct_mean_ms')} | {rel('ujct_p99_ms')} | {verdict} |")
    return "\n".join(lines) + "\n"
