"""Add the learned v2 policies to an existing suite report (same cases, same runs).

    .venv/bin/python docs/evaluation/learned_v2_suite.py \
        --base docs/evaluation/suite/suite.json --out docs/evaluation/learned_v2 \
        --policy qmix --policy sac_gru --policy matd3 [--jobs 2]

Runs only the given policies on the base report's cases (rebuilt with
``sim.suite.make_case``: same scenarios, same trace seeds, checked), then
writes one report with the base report's baselines plus these policies, the
verdicts recomputed over all of them (``sim.scoring.verdicts``: paired over
the same runs).  The base report's own learned entries (today's v1 ``qmix`` /
``sac_gru``) are kept, renamed ``qmix_v1`` / ``sac_gru_v1``, for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from marllb.sim import scoring
from marllb.sim.suite import make_case, run_suite, write


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--base", required=True, help="suite.json with the baselines")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--policy", action="append", default=[], help="NAME or NAME=CKPT")
    ap.add_argument("--reuse", action="append", default=[], metavar="LABEL=REPORT:KEY",
                    help="take policy KEY's results from another report of this script "
                    "(same cases and runs) as LABEL instead of running it again")
    ap.add_argument("--alias", action="append", default=[], metavar="LABEL=POLICY",
                    help="also list POLICY's results as LABEL (e.g. qmix=matd3 when the "
                    "shipped qmix checkpoint is the matd3 one)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--title", default="Learned policy v2 vs the baselines (issue 10)")
    a = ap.parse_args(argv)
    base = json.loads(Path(a.base).read_text())
    cases = []
    for c in base["cases"]:
        case = make_case(c["name"], c["n_runs"])
        got = [(sc.name, s) for sc, s in case.runs]
        want = [(r["scenario"], r["trace_seed"]) for r in c["runs"]]
        if got != want:
            print(f"learned_v2_suite: case {c['name']}: runs differ from {a.base}",
                  file=sys.stderr)
            return 1
        cases.append(case)
    mine = run_suite(cases, a.policy, jobs=a.jobs) if a.policy else \
        {"cases": [{"policies": {}} for _ in cases], "wall_s": 0.0}
    rename = {"qmix": "qmix_v1", "sac_gru": "sac_gru_v1"}
    pols = [rename.get(p, p) for p in base["policies"]] + list(a.policy)
    reused = []
    for spec in a.reuse:
        label, _, rest = spec.partition("=")
        path, _, key = rest.rpartition(":")
        other = json.loads(Path(path).read_text())
        reused.append((label, [c["policies"][key] for c in other["cases"]]))
        pols.append(label)
    aliases = [tuple(x.split("=", 1)) for x in a.alias]
    pols += [lab for lab, _ in aliases]
    for ci, (bc, mc) in enumerate(zip(base["cases"], mine["cases"], strict=True)):
        merged = {rename.get(k, k): v for k, v in bc["policies"].items()}
        merged.update(mc["policies"])
        for label, per_case in reused:
            merged[label] = per_case[ci]
        for label, src in aliases:
            merged[label] = merged[src]
        bc["policies"] = merged
        bc["verdicts"] = scoring.verdicts(merged, bc["static_right"])
    base["policies"] = pols
    base["wall_s"] = round(base["wall_s"] + mine["wall_s"], 1)
    base["learned_v2_wall_s"] = mine["wall_s"]
    for p in write(base, Path(a.out), a.title):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
