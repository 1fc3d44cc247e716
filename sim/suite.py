"""The evaluation suite: shipped scenarios and generator families x policies,
scored with ``marllb.sim.scoring``, written as one report (Markdown, JSON, plot).

A *case* is a list of runs, each a (Scenario, trace seed) pair:

* a shipped scenario (``s1``..``s4``): that scenario on trace seeds 0..K-1
  (training uses trace seeds >= 50000, see sim/train.py);
* a generator family (``marllb.sim.scengen``): its first K evaluation
  scenarios (held-out seeds for a held-out family), trace seed 0 each.

Every policy sees the same runs.  ``lbsim suite --help`` runs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon.fsutil import atomic_file, atomic_write_json, atomic_write_text
from marllb.sim import scengen, scoring
from marllb.sim.scenario import Scenario, load_scenario

# shipped scenarios: static weights right and no capacity change?
SHIPPED_STATIC_RIGHT = {"s1": True, "s2": False, "s3": False, "s4": True, "small": True}
DEFAULT_POLICIES = ("ecmp", "wcmp", "sed", "lsq", "p2c", "wrr_latency", "prequal", "oracle",
                    "qmix", "sac_gru")
DEFAULT_CASES = ("s1", "s2", "s3", "s4", *scengen.HELDOUT_FAMILIES)


@dataclass
class Case:
    name: str
    static_right: bool
    runs: list[tuple[Scenario, int]]

    @property
    def tag(self) -> str:
        return "static weights right" if self.static_right else "wrong/capacity change"


def make_case(name: str, seeds: int) -> Case:
    """A shipped scenario name or a generator family name -> its runs."""
    if name in scengen.FAMILIES:
        fam = scengen.family(name)
        return Case(name, fam.static_right,
                    [(sc, 0) for sc in scengen.eval_scenarios(name, seeds)])
    sc = load_scenario(name)
    right = SHIPPED_STATIC_RIGHT.get(sc.name, static_right(sc))
    return Case(sc.name, right, [(sc, s) for s in range(seeds)])


def static_right(sc: Scenario) -> bool:
    """A scenario file's tag: static weights proportional to cores x speed and
    no capacity events."""
    if any(g.interference is not None for g in sc.servers):
        return False
    ratio = [(g.static_weight if g.static_weight is not None else g.cores * g.speed)
             / (g.cores * g.speed) for g in sc.servers]
    return max(ratio) / min(ratio) < 1.0 + 1e-6


def run_one(sc: Scenario, trace_seed: int, spec: str) -> dict[str, float]:
    """One run of one policy spec (``NAME`` or ``NAME=CHECKPOINT``), scored."""
    from marllb.sim.cluster import Cluster, scenario_trace
    from marllb.sim.evaluate import parse_policy

    name, ckpt = parse_policy(spec)
    tr = scenario_trace(sc, trace_seed)
    res = Cluster(sc, tr, name, seed=trace_seed, checkpoint=ckpt).run()
    return scoring.score_run(res)


def _task(args: tuple[Scenario, int, str]) -> dict[str, float]:
    return run_one(*args)


def run_suite(cases: Sequence[Case], policies: Sequence[str], *, jobs: int = 1,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run every case x policy x run; the report as a JSON-able dict."""
    t0 = time.monotonic()
    tasks = [(ci, ri, spec) for ci, c in enumerate(cases) for spec in policies
             for ri in range(len(c.runs))]
    args = [(cases[ci].runs[ri][0], cases[ci].runs[ri][1], spec) for ci, ri, spec in tasks]
    results: list[dict[str, float]] = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            for r in ex.map(_task, args, chunksize=1):
                results.append(r)
                if progress:
                    progress(1)
    else:
        for a in args:
            results.append(_task(a))
            if progress:
                progress(1)
    per: dict[tuple[int, str], list[dict[str, float]]] = {}
    for (ci, _ri, spec), r in zip(tasks, results, strict=True):
        per.setdefault((ci, spec), []).append(r)
    out_cases = []
    for ci, c in enumerate(cases):
        pols = {spec: scoring.aggregate(per[(ci, spec)]) for spec in policies}
        out_cases.append({
            "name": c.name, "tag": c.tag, "static_right": c.static_right,
            "n_runs": len(c.runs),
            "runs": [{"scenario": sc.name, "trace_seed": s, "servers": sc.n_servers,
                      "lbs": sc.edge.n_lbs, "load": sc.traffic.target_load}
                     for sc, s in c.runs],
            "policies": pols,
            "verdicts": scoring.verdicts(pols, c.static_right),
        })
    return {"reject_penalty_s": scoring.REJECT_PENALTY_S, "baselines": list(scoring.BASELINES),
            "policies": list(policies), "cases": out_cases,
            "wall_s": round(time.monotonic() - t0, 1), "jobs": jobs,
            "cpus": os.cpu_count()}


def markdown(report: dict[str, Any], title: str = "Evaluation suite") -> str:
    lines = [f"# {title}", "",
             f"User JCT = JCT of completed flows, a rejected flow counted as "
             f"{report['reject_penalty_s']:g} s (sim/scoring.py).  Mean ± 95% CI "
             f"half-width over the runs of each case.  'vs best' = change against the "
             f"best non-oracle baseline ({', '.join(report['baselines'])}) on that metric; "
             "verdicts judge non-baseline policies: within +2% where static weights are "
             "right, at least 5% better where they are wrong or capacity changes.",
             "", f"Wall time {report['wall_s']:.0f} s with {report['jobs']} job(s) on "
             f"{report['cpus']} CPU(s).", ""]
    judged = [p for p in report["policies"]
              if p not in report["baselines"] and p != scoring.ORACLE]
    if judged:
        lines += ["## Verdicts", "", "| case | tag | " + " | ".join(judged) + " |",
                  "|---|---|" + "---|" * len(judged)]
        for c in report["cases"]:
            cells = []
            for p in judged:
                v = c["verdicts"].get(p, {})
                cells.append("**met**" if v.get("met") else "not met")
            lines.append(f"| {c['name']} | {c['tag']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Per case", ""]
    for c in report["cases"]:
        lines.append(scoring.case_table(c))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """User JCT mean and p99 of each policy relative to the best baseline, per
    case (mean over runs of the per-run ratio, as in the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = report["cases"]
    pols = [p for p in report["policies"]]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(cases)), 7), sharex=True)
    width = 0.8 / max(1, len(pols))
    x = np.arange(len(cases))
    for ax, key, label in zip(axes, scoring.VERDICT_KEYS, ("mean", "p99"), strict=True):
        for i, p in enumerate(pols):
            vals = []   # the table's figure: mean over runs of the paired ratio
            for c in cases:
                b = scoring.best_baseline(c["policies"], key)
                vals.append(1.0 + scoring.compare(c["policies"][p], c["policies"][b],
                                                  key)["rel"] if b else np.nan)
            ax.bar(x + (i - len(pols) / 2 + 0.5) * width, vals, width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(f"user JCT {label} / best baseline\n(mean of per-run ratios)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [c["name"] for c in cases], rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=7, ncol=min(5, len(pols)))
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write(report: dict[str, Any], out: Path, title: str = "Evaluation suite",
          plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_json(out / "suite.json", report),
             atomic_write_text(out / "suite.md", markdown(report, title))]
    if plots:
        plot(report, out / "suite.png")
        paths.append(out / "suite.png")
    return paths
