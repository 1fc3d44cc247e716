"""Fine-tune a learned policy from lbd's own trajectory log (opt-in, offline).

    lbsim train --from-log /var/lib/marllb/traj --init qmix.safetensors --algo qmix \\
        --minutes 10 --out runs/ft [--store /var/lib/marllb/checkpoints --name qmix]

1. ``sim/calibrate.py`` fits a scenario to the log (per-server speeds the
   static weights do not know, the observed load);
2. ``lbsim train`` continues the ``--init`` checkpoint in that scenario (the
   simulator explores the counterfactual weights the log never tried);
3. the **evaluation gate**: the fine-tuned policy and the ``--init`` one are
   evaluated on the calibrated scenario over held-back seeds; the gate passes
   when the candidate's mean AND p99 JCT (rejected flows counted as the
   scorer counts them) are no worse than the init's by more than 1%;
4. with ``--store``, the result is added as the next version with its
   manifest (parent = the init's version when it came from the store, the
   training command, the calibrated scenario, the evaluation, the gate).
   ``lbctl canary start`` refuses a version whose gate did not pass.

Nothing here runs inside lbd: the daemon only writes the log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from marllb.daemon.fsutil import atomic_write_json, atomic_write_text
from marllb.sim.calibrate import CalibrationError, calibrate

GATE_TOLERANCE = 0.01
GATE_SEEDS = 3


def scenario_toml(d: dict[str, Any]) -> str:
    """A Scenario's dict as TOML (scalars, one level of tables, arrays of tables)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines, tables, arrays = [], [], []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {val(v)}")
    for k, t in tables:
        lines += ["", f"[{k}]"] + [f"{a} = {val(b)}" for a, b in t.items()
                                   if b is not None and not isinstance(b, dict)]
    for k, rows in arrays:
        for r in rows:
            lines += ["", f"[[{k}]]"] + [f"{a} = {val(b)}" for a, b in r.items()
                                         if b is not None and not isinstance(b, dict)]
    return "\n".join(lines) + "\n"


def gate(scenario_path: Path, algo: str, candidate: Path, init: Path,
         seeds: int = GATE_SEEDS) -> dict[str, Any]:
    """Candidate vs init on the calibrated scenario: mean and p99 JCT within tolerance."""
    from marllb.sim.evaluate import evaluate
    from marllb.sim.scenario import load_scenario

    sc = load_scenario(scenario_path)
    pols = [f"{algo}={candidate}", f"{algo}={init}"]
    summary, _ = evaluate(sc, pols, seeds=seeds)
    cand, base = summary[pols[0]], summary[pols[1]]
    ok = all(cand[k] <= base[k] * (1 + GATE_TOLERANCE) for k in ("jct_mean_ms", "jct_p99_ms"))
    return {"passed": bool(ok), "scenario": str(scenario_path), "seeds": seeds,
            "tolerance": GATE_TOLERANCE, "candidate": cand, "init": base,
            "why": ("candidate within tolerance of init on mean and p99 JCT" if ok else
                    "candidate worse than init on mean or p99 JCT")}


def finetune(log_dir: str, init: str, *, algo: str, minutes: float, out: Path,
             n_lbs: int = 1, episodes: int | None = None, store: str | None = None,
             name: str | None = None, seed: int = 0, quiet: bool = False,
             argv: list[str] | None = None) -> dict[str, Any]:
    from marllb.daemon.rollout import split_spec
    from marllb.sim.train import train

    out.mkdir(parents=True, exist_ok=True)
    cal = calibrate(log_dir, n_lbs=n_lbs, name="calibrated")
    sc_path = out / "calibrated.toml"
    atomic_write_text(sc_path, scenario_toml(cal.scenario.model_dump()))
    init_name, init_path = split_spec(init, store) if "@" in init else (algo, init)
    train(algo, str(sc_path), minutes=minutes, episodes=episodes, seed=seed,
          out=out / "train", init=init_path, quiet=quiet, argv=argv)
    best = out / "train" / "best.safetensors"
    if not best.is_file():
        raise CalibrationError(f"training wrote no checkpoint under {out / 'train'}")
    verdict = gate(sc_path, algo, best, Path(str(init_path)))
    report = {"log": str(log_dir), "init": init, "algo": algo,
              "fitted_speed": cal.speed.round(4).tolist(), "fitted_load": cal.load,
              "records_per_server": cal.samples.tolist(), "gate": verdict}
    if store:
        from marllb.daemon.versions import CheckpointStore

        parent = init if "@" in init else None
        ver = CheckpointStore(store).add(
            name or init_name, best, parent=parent,
            training={"command": " ".join(argv or sys.argv), "scenarios": str(sc_path),
                      "from_log": str(log_dir), "minutes": minutes},
            evaluation={"init": verdict["init"], "candidate": verdict["candidate"]},
            gate=verdict)
        report["version"] = f"{name or init_name}@{ver}"
    atomic_write_json(out / "finetune.json", report)
    return report


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run from ``lbsim train --from-log``; one line per outcome."""
    if not args.init or not args.algo or not args.out:
        print("lbsim train --from-log: needs --init CHECKPOINT, --algo and --out",
              file=sys.stderr)
        return 2
    try:
        rep = finetune(args.from_log, args.init, algo=args.algo,
                       minutes=args.minutes if args.minutes is not None else 10.0,
                       episodes=args.episodes, out=Path(args.out), n_lbs=args.log_lbs,
                       store=args.store, name=args.name, seed=args.seed, quiet=args.quiet,
                       argv=sys.argv)
    except CalibrationError as e:
        print(f"lbsim train --from-log: {e}", file=sys.stderr)
        return 65
    g = rep["gate"]
    print(f"fitted speeds {rep['fitted_speed']} (load {rep['fitted_load']:.2f}); gate "
          f"{'PASSED' if g['passed'] else 'FAILED'}: candidate mean "
          f"{g['candidate']['jct_mean_ms']:.1f} ms p99 {g['candidate']['jct_p99_ms']:.1f} ms vs "
          f"init {g['init']['jct_mean_ms']:.1f} / {g['init']['jct_p99_ms']:.1f} ms"
          + (f"; stored as {rep['version']}" if "version" in rep else ""))
    return 0 if g["passed"] else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``lbsim train``'s fine-tune-from-log options."""
    p.add_argument("--from-log", metavar="DIR", help="fine-tune --init from lbd's trajectory "
                   "log (calibrated scenario, then the evaluation gate; see sim/finetune.py)")
    p.add_argument("--log-lbs", type=int, default=1,
                   help="with --from-log: LBs that shared the logged servers (even split)")
    p.add_argument("--store", help="with --from-log: add the result to this checkpoint store")
    p.add_argument("--name", help="with --store: the policy name (default: the algorithm)")
