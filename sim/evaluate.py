"""Evaluation: run policies x seeds on a scenario (or a replayed trace),
average the metrics, and write summary.json, a Markdown table and plots."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon.fsutil import atomic_file, atomic_write_text
from marllb.sim.cluster import ORACLE, Cluster, SimResult, scenario_trace
from marllb.sim.executor import Executor, run_evals
from marllb.sim.metrics import METRICS as SLA_METRICS
from marllb.sim.metrics import plot_sla_fairness, sla_fairness
from marllb.sim.scenario import Scenario
from marllb.sim.scoring import REJECT_PENALTY_S, ci95, score_run
from marllb.sim.traces import Trace

METRICS = ("jct_mean_ms", "jct_p50_ms", "jct_p90_ms", "jct_p99_ms", "rejected_frac",
           "jain_load_over_capacity", "flows", "ujct_mean_ms", "ujct_p99_ms", *SLA_METRICS)
# user JCT (sim/scoring.py: a rejected flow counts REJECT_PENALTY_S): also its 95% CI
CI_METRICS = ("ujct_mean_ms", "ujct_p99_ms")


def check_out_dir(out: Path) -> None:
    """Refuse an output directory that cannot be written BEFORE a run (OSError
    with the reason), so a long evaluation never ends with its results lost."""
    out.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
    os.close(fd)
    os.unlink(probe)


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
             progress: Callable[[int], None] | None = None, sla_target_s: float | None = None,
             executor: Executor | None = None,
             ) -> tuple[dict[str, dict[str, float]], dict[str, SimResult]]:
    """Mean of each metric over ``seeds`` runs per policy, and each policy's
    seed-0 result (for plots).  Every policy sees the same traces.  A policy
    is ``NAME`` or ``NAME=CHECKPOINT`` (learned policies); results are keyed
    by NAME, or by the whole spec when a NAME appears more than once.
    ``executor`` (``marllb.sim.executor``) fans the runs out; same numbers."""
    out: dict[str, dict[str, float]] = {}
    first: dict[str, SimResult] = {}
    if executor is not None:
        tasks = [(sc, trace, *parse_policy(p), s) for p in policies for s in range(seeds)]
        ran = iter(run_evals(tasks, executor, progress))
        traces = [trace] * seeds     # not used: every run is done
    else:
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

            res = next(ran) if executor is not None else \
                Cluster(sc, tr, pol, seed=s, checkpoint=ckpt).run(progress=cb)
            for k, v in {**score_run(res), **res.summary(),
                         **sla_fairness(res, sla_target_s)}.items():
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
             "p90 | p99 | Jain load/cap | flows | SLA viol. | CV load/cap | max/min util |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pol, m in results.items():
        lines.append(f"| {pol} | {ci(m, 'ujct_mean_ms')} | {ci(m, 'ujct_p99_ms')} | "
                     f"{100 * m['rejected_frac']:.2f}% | {m['jct_mean_ms']:.1f} | "
                     f"{m['jct_p50_ms']:.1f} | "
                     f"{m['jct_p90_ms']:.1f} | {m['jct_p99_ms']:.1f} | "
                     f"{m['jain_load_over_capacity']:.3f} | {m['flows']:.0f} | "
                     f"{100 * m['sla_violation_frac']:.2f}% | "
                     f"{m['cv_load_over_capacity']:.3f} | {m['util_max_min_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, SimResult], out: Path) -> list[Path]:
    """JCT tail per policy (``jct_cdf.png``: a log-log CCDF, where policies
    differ), and per policy the load and the weights over time as small
    multiples, one panel per server (7 overlapping lines are unreadable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    def save(fig: Any, p: Path) -> Path:
        with atomic_file(p) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        return p

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pol, r in results.items():
        j = np.sort(r.jct * 1e3)
        if j.size:
            ax.step(j, 1.0 - np.arange(j.size) / j.size, where="post",
                    label=f"{pol} (p99 {np.percentile(j, 99):.0f} ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lows = [float(np.percentile(r.jct, 1)) * 1e3 for r in results.values() if r.jct.size]
    if lows:   # the fastest 1% say nothing about the tail
        ax.set_xlim(left=max(1e-3, min(lows) / 2))
    ax.axhline(0.01, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("job completion time (ms, log)")
    ax.set_ylabel("fraction of jobs slower (CCDF, log)")
    ax.set_title("JCT tail (seed 0); dotted: p99", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(save(fig, out / "jct_cdf.png"))
    for pol, r in results.items():
        for what, data, ylabel in (
            ("load", r.tick_load, "jobs in system / cores"),
            ("weights", r.tick_weights, "weight in force (LB 0)"),
        ):
            n = data.shape[1] if data.size else 0
            fig, panels = server_panels(plt, n, row_h=1.4, head=0.9)
            for k, ax in enumerate(panels):
                ax.plot(r.tick_t, data[:, k], lw=0.9, drawstyle="steps-post")
                ax.set_ylim(bottom=0)   # proportions between servers read true
                ax.set_title(f"server {k}", fontsize=8, loc="left")
                ax.grid(True, alpha=0.3)
                ax.tick_params(labelsize=7)
            fig.supxlabel("simulated time (s)", fontsize=9)
            fig.supylabel(ylabel, fontsize=9)
            fig.suptitle(f"{pol}: {what} over time, per server", fontsize=10)
            fig.tight_layout()
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in pol)
            written.append(save(fig, out / f"{what}_{safe}.png"))
    return written


def server_panels(plt: Any, n: int, row_h: float, head: float) -> tuple[Any, list[Any]]:
    """One small panel per server (two columns past three servers), shared axes; the
    spare panel of an odd grid is turned off.  Returns the figure and the n panels."""
    cols = 2 if n > 3 else 1
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(8, row_h * rows + head), sharex=True,
                             sharey=True, squeeze=False)
    flat = [axes[k // cols][k % cols] for k in range(rows * cols)]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def write_report(out: Path, scenario: str, trace: str | None,
                 results: dict[str, dict[str, float]], firsts: dict[str, SimResult],
                 seeds: int, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"scenario": scenario, "trace": trace, "policies": results}
    # atomic writes: a kill or a full disk leaves the previous complete files
    details = {pol: r.details() for pol, r in firsts.items()}
    atomic_write_text(out / "details.json", json.dumps(
        {"note": "seed 0 of each policy", "policies": details}, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table(scenario, trace, results, seeds))
    atomic_write_text(out / "summary.json",
                      json.dumps(summary, indent=2, allow_nan=True) + "\n")
    if plots:
        plot(firsts, out)
        plot_sla_fairness(results, out / "sla_fairness.png")
