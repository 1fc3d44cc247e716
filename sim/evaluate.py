"""Evaluation: run policies x seeds on a scenario (or a replayed trace),
average the metrics, and write summary.json, a Markdown table and plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from marllb.sim.cluster import ORACLE, Cluster, SimResult, scenario_trace
from marllb.sim.scenario import Scenario
from marllb.sim.scoring import REJECT_PENALTY_S, ci95, score_run
from marllb.sim.traces import Trace

METRICS = ("jct_mean_ms", "jct_p50_ms", "jct_p90_ms", "jct_p99_ms", "rejected_frac",
           "jain_load_over_capacity", "flows", "ujct_mean_ms", "ujct_p99_ms")
# user JCT (sim/scoring.py: a rejected flow counts REJECT_PENALTY_S): also its 95% CI
CI_METRICS = ("ujct_mean_ms", "ujct_p99_ms")


def known_policies() -> list[str]:
    from marllb.daemon.policies import discover

    return sorted(set(discover()) | {ORACLE})


def run_trace(sc: Scenario, trace: Trace | None, seed: int) -> Trace:
    return trace if trace is not None else scenario_trace(sc, seed)


def parse_policy(spec: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=CHECKPOINT`` -> (name, checkpoint or None)."""
    name, sep, ckpt = spec.partition("=")
    return name.strip(), (ckpt.strip() or None) if sep else None


def evaluate(sc: Scenario, policies: list[str], *, seeds: int = 1, trace: Trace | None = None,
             progress: Callable[[int], None] | None = None,
             ) -> tuple[dict[str, dict[str, float]], dict[str, SimResult]]:
    """Mean of each metric over ``seeds`` runs per policy, and each policy's
    seed-0 result (for plots).  Every policy sees the same traces.  A policy
    is ``NAME`` or ``NAME=CHECKPOINT`` (learned policies); results are keyed
    by NAME, or by the whole spec when a NAME appears more than once."""
    out: dict[str, dict[str, float]] = {}
    first: dict[str, SimResult] = {}
    traces = [run_trace(sc, trace, s) for s in range(seeds)]
    names = [parse_policy(p)[0] for p in policies]
    for spec in policies:
        pol, ckpt = parse_policy(spec)
        label = pol if names.count(pol) == 1 else spec
        acc: dict[str, list[float]] = {k: [] for k in METRICS}
        for s in range(seeds):
            tr = traces[s]
            done = [0]

            def cb(frac: float, tr: Trace = tr, done: list[int] = done) -> None:
                n = int(frac * len(tr))
                if progress is not None and n > done[0]:
                    progress(n - done[0])
                    done[0] = n

            res = Cluster(sc, tr, pol, seed=s, checkpoint=ckpt).run(progress=cb)
            for k, v in {**score_run(res), **res.summary()}.items():
                if k in acc:
                    acc[k].append(v)
            if s == 0:
                first[label] = res
        out[label] = {k: float(np.mean(v)) if v else math.nan for k, v in acc.items()}
        out[label].update({f"{k}_ci95": ci95(acc[k])[1] for k in CI_METRICS})
    return out, first


def markdown_table(scenario: str, trace: str | None, results: dict[str, dict[str, float]],
                   seeds: int) -> str:
    src = f"trace `{trace}`" if trace else "generated trace"

    def ci(m: dict[str, float], k: str) -> str:
        h = m.get(f"{k}_ci95", math.nan)
        return f"{m[k]:.1f} ± {h:.1f}" if np.isfinite(h) else f"{m[k]:.1f}"

    lines = [f"# {scenario}: {src}, mean over {seeds} seed(s)", "",
             f"User JCT counts a rejected flow as {REJECT_PENALTY_S:g} s (sim/scoring.py); "
             "± is the 95% CI half-width over seeds; JCT columns are completed flows only.",
             "",
             "| policy | user JCT mean (ms) | user JCT p99 (ms) | rejected | JCT mean | p50 | "
             "p90 | p99 | Jain load/cap | flows |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pol, m in results.items():
        lines.append(f"| {pol} | {ci(m, 'ujct_mean_ms')} | {ci(m, 'ujct_p99_ms')} | "
                     f"{100 * m['rejected_frac']:.2f}% | {m['jct_mean_ms']:.1f} | "
                     f"{m['jct_p50_ms']:.1f} | "
                     f"{m['jct_p90_ms']:.1f} | {m['jct_p99_ms']:.1f} | "
                     f"{m['jain_load_over_capacity']:.3f} | {m['flows']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, SimResult], out: Path) -> list[Path]:
    """JCT CDF per policy, per-server load over time and weights over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pol, r in results.items():
        j = np.sort(r.jct * 1e3)
        if j.size:
            ax.plot(j, np.arange(1, j.size + 1) / j.size, label=pol)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (ms)")
    ax.set_ylabel("CDF")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = out / "jct_cdf.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    for pol, r in results.items():
        for what, data, ylabel in (
            ("load", r.tick_load, "jobs in system / cores"),
            ("weights", r.tick_weights, "weight in force (LB 0)"),
        ):
            fig, ax = plt.subplots(figsize=(7, 4))
            if data.size:
                for j in range(data.shape[1]):
                    ax.plot(r.tick_t, data[:, j], lw=0.8, label=f"server {j}")
            ax.set_xlabel("simulated time (s)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{pol}: {what} over time")
            ax.grid(True, alpha=0.3)
            if data.size and data.shape[1] <= 12:
                ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in pol)
            p = out / f"{what}_{safe}.png"
            fig.savefig(p, dpi=100)
            plt.close(fig)
            written.append(p)
    return written


def write_report(out: Path, scenario: str, trace: str | None,
                 results: dict[str, dict[str, float]], firsts: dict[str, SimResult],
                 seeds: int, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"scenario": scenario, "trace": trace, "policies": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    (out / "summary.md").write_text(markdown_table(scenario, trace, results, seeds))
    details = {pol: r.details() for pol, r in firsts.items()}
    (out / "details.json").write_text(json.dumps(
        {"note": "seed 0 of each policy", "policies": details}, indent=2) + "\n")
    if plots:
        plot(firsts, out)
