"""``lbsim``: the simulator's command line.

    lbsim eval --scenario s1 --policy sed --policy lsq --out results/
    lbsim dataplane --scenario small --region vip0 --speed 4

More subcommands plug in without editing this file: any module
``marllb.sim.train*`` (or ``marllb.sim.cmd_*``) that defines
``register_cli(subparsers)`` is offered its own subcommand(s); the parser it
adds must ``set_defaults(func=...)`` with ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_CONFIG = 78


def _die(msg: str, code: int) -> int:
    print(f"lbsim: error: {msg}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace):  # noqa: ANN202
    from marllb.sim.scenario import ScenarioError, load_scenario
    from marllb.sim.traces import TraceError, load_trace

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as e:
        raise SystemExit(_die(str(e), EX_CONFIG)) from None
    if getattr(args, "duration", None) is not None:
        if args.duration <= 0:
            raise SystemExit(_die(f"--duration must be > 0, got {args.duration}", EX_USAGE))
        sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(
            update={"duration_s": float(args.duration)})})
    trace = None
    if args.trace:
        try:
            trace = load_trace(args.trace)
        except TraceError as e:
            raise SystemExit(_die(str(e), EX_DATAERR)) from None
        if not args.no_scale:
            trace = trace.scaled_to_load(sc.traffic.target_load, sc.capacity_cores, sc.speed)
        if getattr(args, "duration", None) is not None:
            trace = trace.truncated(args.duration)
    return sc, trace


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from marllb.sim.cluster import scenario_trace
    from marllb.sim.evaluate import evaluate, known_policies, write_report

    sc, trace = _load(args)
    from marllb.daemon.policies import PolicyError
    from marllb.daemon.tick import PolicySlot
    from marllb.sim.evaluate import parse_policy

    policies = args.policy or ["ecmp", "wcmp", "sed", "lsq", "oracle"]
    known = known_policies()
    for spec in policies:
        name, ckpt = parse_policy(spec)
        if name not in known:
            return _die(f"unknown policy {name!r}; known: {', '.join(known)}", EX_USAGE)
        if name != "oracle":
            try:   # a learned policy must load: never evaluate its fallback by mistake
                PolicySlot.build_strict(name, ckpt, "sed")
            except PolicyError as e:
                return _die(f"--policy {spec}: {e}", EX_CONFIG)
    if args.seeds < 1:
        return _die(f"--seeds must be >= 1, got {args.seeds}", EX_USAGE)
    n_flows = (len(trace) * args.seeds if trace is not None
               else sum(len(scenario_trace(sc, s)) for s in range(args.seeds)))
    from marllb.sim.executor import ExecutorError, executor_from_args

    try:
        executor = executor_from_args(args)
    except ExecutorError as e:
        return _die(str(e), EX_USAGE if "--" in str(e) else EX_UNAVAILABLE)
    try:
        with tqdm(total=n_flows * len(policies), unit="flow", unit_scale=True,
                  disable=args.quiet, desc=f"{sc.name}", file=sys.stderr) as bar:
            results, firsts = evaluate(sc, policies, seeds=args.seeds, trace=trace,
                                       progress=bar.update, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    out = Path(args.out)
    write_report(out, sc.name, str(args.trace) if args.trace else None, results, firsts,
                 args.seeds, plots=not args.no_plots)
    print((out / "summary.md").read_text(), end="")
    print(f"wrote {out / 'summary.json'}", file=sys.stderr)
    return 0


def cmd_dataplane(args: argparse.Namespace) -> int:
    from marllb.daemon.shm import RegionError
    from marllb.sim.cluster import scenario_trace
    from marllb.sim.realtime import Dataplane, summary_dict, write_summary

    sc, trace = _load(args)
    if not args.speed > 0:
        return _die(f"--speed must be > 0, got {args.speed}", EX_USAGE)
    from marllb.daemon.policies import PolicyError, make_policy

    try:
        make_policy(args.mode)
    except PolicyError as e:
        return _die(f"--mode: {e}", EX_USAGE)
    if trace is None:
        trace = scenario_trace(sc, args.seed)
    dp = Dataplane(sc, trace, args.region, speed=args.speed, policy=args.mode,
                   seed=args.seed, replace=args.replace)
    print(f"lbsim dataplane: scenario {sc.name}, {len(trace)} flows over "
          f"{trace.span_s:.1f} s simulated, speed x{args.speed:g}, regions "
          f"{', '.join(dp.names)}", file=sys.stderr, flush=True)
    try:
        res = dp.run()
    except RegionError as e:
        return _die(str(e), EX_UNAVAILABLE)
    d = summary_dict(sc, str(args.trace) if args.trace else None, res, dp.names, args.speed)
    out = Path(args.out)
    write_summary(out, d)
    m = d["policies"]["dataplane"]
    print(f"lbsim dataplane: {d['completed']} completed, {d['rejected']} rejected, "
          f"{d['unfinished']} unfinished, JCT mean {m['jct_mean_ms']:.1f} ms, "
          f"msg_in accepted {d['msg_in_accepted']}; wrote {out}", file=sys.stderr)
    return 0


def _plugins(sub: argparse._SubParsersAction) -> None:
    import marllb.sim as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not (info.name.startswith("train") or info.name.startswith("cmd_")):
            continue
        try:
            mod = importlib.import_module(f"marllb.sim.{info.name}")
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break eval
            print(f"lbsim: warning: {info.name} not loaded: {e}", file=sys.stderr)
            continue
        reg = getattr(mod, "register_cli", None)
        if callable(reg):
            reg(sub)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lbsim", description="marllb simulator: evaluate "
                                 "policies, or stand in for the data plane in real time.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scenario", required=True,
                       help="shipped name (s1, s2, s3, s4, small) or a TOML file")
        p.add_argument("--trace", help="replay this trace (testbed TSV or time,size CSV) "
                       "instead of the scenario's generator")
        p.add_argument("--no-scale", action="store_true",
                       help="replay --trace as is (default: time-scaled so the offered "
                       "load is the scenario's target_load)")
        p.add_argument("--duration", type=float, help="simulated seconds of arrivals "
                       "(default: the scenario's traffic.duration_s / the whole trace)")

    pe = sub.add_parser("eval", help="run policies on a scenario and write a report",
                        description="Run each policy over the same trace(s), K seeds each; "
                        "write DIR/summary.json, DIR/summary.md and PNG plots.")
    common(pe)
    pe.add_argument("--policy", action="append",
                    help="policy (repeatable): a daemon registry name (static, ecmp, wcmp, "
                    "sed, lsq, ...), NAME=CHECKPOINT for a learned one, or oracle; "
                    "default: ecmp wcmp sed lsq oracle")
    pe.add_argument("--seeds", type=int, default=1, help="runs per policy (default 1)")
    pe.add_argument("--out", required=True, help="output directory")
    pe.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    pe.add_argument("--quiet", action="store_true", help="no progress bar")
    from marllb.sim.executor import add_executor_args

    add_executor_args(pe)
    pe.set_defaults(func=cmd_eval)

    pd = sub.add_parser("dataplane", help="own a shm region and run the cluster in real time",
                        description="Create and own the shm region(s) like VPP would and run "
                        "the cluster in step with the wall clock; a daemon (lbd) attaches and "
                        "drives the weights.  Writes a summary at the end or on SIGTERM.")
    common(pd)
    pd.add_argument("--region", required=True,
                    help="region name (LB 0); LB k >= 1 gets NAME-lb<k>")
    pd.add_argument("--speed", type=float, default=1.0,
                    help="simulated seconds per wall second (default 1)")
    pd.add_argument("--mode", default="static",
                    help="policy whose mode the data plane is configured with (its fallback "
                    "when no fresh daemon weights): static/sed, wcmp, lsq, ecmp")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--replace", action="store_true",
                    help="take over a region of that name left behind by a dead data plane")
    pd.add_argument("--out", default="dataplane-summary.json",
                    help="summary JSON path (default ./dataplane-summary.json)")
    pd.set_defaults(func=cmd_dataplane)
    _plugins(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
