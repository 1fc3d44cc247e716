"""Training curves of the learned v2 runs side by side (held-back score vs wall time).

    .venv/bin/python docs/evaluation/learned_v2_curves.py OUT.png RUN_DIR [RUN_DIR ...]

Each RUN_DIR is an ``lbsim train --net setnet`` output (``eval.json``); the score is
the held-back JCT ratio to the untrained residual (= wrr_latency), lower is better.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from marllb.daemon.fsutil import atomic_file


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for d in argv[1:]:
        ev = json.loads((Path(d) / "eval.json").read_text())
        xs = [e["wall_s"] / 60 for e in ev["evals"]]
        ys = [e["score"] for e in ev["evals"]]
        ax.plot(xs, ys, "o-", label=f"{ev['algorithm']} ({ev['episodes']} episodes, "
                f"best {ev['best_score']:.3f})")
    ax.axhline(1.0, color="grey", ls="--", label="untrained residual = wrr_latency")
    ax.set_xlabel("wall-clock minutes (shared 2-core machine)")
    ax.set_ylabel("held-back JCT (mean+p99)/2 ratio to wrr_latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(argv[0]) as p:
        fig.savefig(p, dpi=100, format="png")
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
