"""Build docs/evaluation.md's tables and bar plots from `lbsim eval` summaries.

    bash docs/evaluation/run_eval.sh        # runs lbsim eval, then this script

Reads docs/evaluation/<scenario>/*/summary.json (one or more eval runs per
scenario, policies merged), writes docs/evaluation/results.md (tables and the
goal check) and docs/evaluation/jct_bars.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = ("s1", "s2", "s3", "s4")
HEURISTICS = ("ecmp", "wcmp", "sed", "lsq")
ORDER = ("ecmp", "wcmp", "sed", "lsq", "oracle", "qmix", "sac_gru")


def load(sc: str) -> dict[str, dict[str, float]]:
    pols: dict[str, dict[str, float]] = {}
    for p in sorted((HERE / sc).glob("*/summary.json")):
        pols.update(json.loads(p.read_text())["policies"])
    return pols


def goal(sc: str, pols: dict[str, dict[str, float]], learned: str) -> list[str]:
    """The issue's goal for one scenario, per metric: (target, value, met)."""
    out = []
    if learned not in pols:
        return [f"{learned}: not evaluated"]
    for metric, label in (("jct_mean_ms", "mean"), ("jct_p99_ms", "p99")):
        best_name = min(HEURISTICS, key=lambda h: pols[h][metric])
        best = pols[best_name][metric]
        val = pols[learned][metric]
        if sc == "s1":
            target = 1.05 * best
            rule = "within 5% of best heuristic"
        else:
            gap = best - pols["oracle"][metric]
            target = best - min(0.15 * best, 0.5 * gap)
            rule = "best heuristic - min(15%, half the gap to oracle)"
        met = "MET" if val <= target else "NOT met"
        out.append(f"{learned} {label}: {val:.1f} ms vs target <= {target:.1f} ms "
                   f"({rule}; best heuristic {best_name} {best:.1f} ms, "
                   f"{100 * (val / best - 1):+.1f}%) -> **{met}**")
    return out


def main() -> int:
    lines = []
    data = {sc: load(sc) for sc in SCENARIOS}
    for sc in SCENARIOS:
        pols = data[sc]
        if not pols:
            print(f"no results for {sc}", file=sys.stderr)
            continue
        lines += [f"### {sc.upper()}", "",
                  "| policy | JCT mean (ms) | p50 | p90 | p99 | rejected | Jain load/cap |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in ORDER:
            if name in pols:
                m = pols[name]
                lines.append(f"| {name} | {m['jct_mean_ms']:.1f} | {m['jct_p50_ms']:.1f} | "
                             f"{m['jct_p90_ms']:.1f} | {m['jct_p99_ms']:.1f} | "
                             f"{100 * m['rejected_frac']:.2f}% | "
                             f"{m['jain_load_over_capacity']:.3f} |")
        lines.append("")
        for learned in ("qmix", "sac_gru"):
            lines += [f"- {g}" for g in goal(sc, pols, learned)]
        lines.append("")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, label in ((axes[0], "jct_mean_ms", "mean JCT (ms)"),
                              (axes[1], "jct_p99_ms", "p99 JCT (ms)")):
        width = 0.8 / len(ORDER)
        for i, name in enumerate(ORDER):
            vals = [data[sc].get(name, {}).get(metric, np.nan) for sc in SCENARIOS]
            ax.bar(np.arange(len(SCENARIOS)) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(SCENARIOS)) + 0.4 - width / 2)
        ax.set_xticklabels([s.upper() for s in SCENARIOS])
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(HERE / "jct_bars.png", dpi=100)
    plt.close(fig)
    print((HERE / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
