"""``lbsim suite``: shipped scenarios and generator families x policies, one report.

    lbsim suite --out docs/evaluation/suite --seeds 5 --jobs 2
    lbsim suite --out /tmp/r --case s2 --case heldout-equal-wrong --policy sed --policy qmix

See sim/suite.py (what a case is) and sim/scoring.py (the metrics and verdicts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _die(msg: str, code: int) -> int:
    print(f"lbsim suite: error: {msg}", file=sys.stderr)
    return code


def cmd_suite(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from marllb.daemon.policies import PolicyError
    from marllb.daemon.tick import PolicySlot
    from marllb.sim import suite
    from marllb.sim.evaluate import known_policies, parse_policy
    from marllb.sim.scenario import ScenarioError

    if args.seeds < 1 or args.jobs < 1:
        return _die(f"--seeds and --jobs must be >= 1 (got {args.seeds}, {args.jobs})", 2)
    policies = args.policy or list(suite.DEFAULT_POLICIES)
    known = known_policies()
    for spec in policies:
        name, ckpt = parse_policy(spec)
        if name not in known:
            return _die(f"unknown policy {name!r}; known: {', '.join(known)}", 2)
        if name != "oracle":
            try:   # a learned policy must load: never evaluate its fallback by mistake
                PolicySlot.build_strict(name, ckpt, "sed")
            except PolicyError as e:
                return _die(f"--policy {spec}: {e}", 78)
    try:
        cases = [suite.make_case(c, args.seeds) for c in (args.case or suite.DEFAULT_CASES)]
    except (ScenarioError, ValueError) as e:
        return _die(str(e), 78)
    total = sum(len(c.runs) for c in cases) * len(policies)
    with tqdm(total=total, unit="run", disable=args.quiet, file=sys.stderr,
              desc="suite") as bar:
        report = suite.run_suite(cases, policies, jobs=args.jobs, progress=bar.update)
    out = Path(args.out)
    suite.write(report, out, title=args.title, plots=not args.no_plots)
    print(suite.markdown(report, args.title), end="")
    print(f"wrote {out / 'suite.md'}, {out / 'suite.json'} ({report['wall_s']:.0f} s)",
          file=sys.stderr)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    from marllb.sim import scengen

    p = sub.add_parser(
        "suite", help="run scenarios and generator families x policies; one report",
        description="Run every case (shipped scenario: trace seeds 0..K-1; generator "
        "family: its first K evaluation scenarios, held-out seeds for heldout-*) with "
        "every policy, score user JCT (rejects counted), 95%% CIs and verdicts; write "
        "OUT/suite.md, OUT/suite.json and OUT/suite.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--case", action="append",
                   help="a shipped scenario (s1..s4) or a family ("
                   f"{', '.join(scengen.FAMILIES)}); repeatable; default: s1-s4 and "
                   "every held-out family")
    p.add_argument("--policy", action="append",
                   help="NAME or NAME=CHECKPOINT, repeatable; default: ecmp wcmp sed lsq "
                   "p2c wrr_latency prequal oracle qmix sac_gru")
    p.add_argument("--seeds", type=int, default=5, help="runs per case")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--title", default="Evaluation suite", help="report title")
    p.add_argument("--no-plots", action="store_true", help="skip suite.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_suite)
