"""``lbsim``: the simulator's command line.

    lbsim eval --scenario s1 --policy sed --policy qmix=runs/q/best --out results/
    lbsim dataplane --scenario small --region vip0 --speed 4

Subcommands that need torch (``train``) are registered without importing it
at start-up; without torch they fail with one line naming ``marllb[train]``.

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
import tempfile
from pathlib import Path

EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_IOERR = 74
EX_CONFIG = 78
TRAIN_EXTRA = "pip install 'marllb[train]'"
# lbsim dataplane --mode: the data plane's selection mode (spelled as in the VPP
# CLI) -> the heuristic whose static weights and mode it configures
DP_MODES = {"sed": "sed", "wcmp": "wcmp", "lsq": "lsq", "hash": "ecmp"}
DP_MODE_ALIASES = {"static": "sed", "ecmp": "hash", "wrandom": "wcmp", "least_active": "lsq"}


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
    from marllb.daemon.fsutil import OutputError
    from marllb.daemon.policies import PolicyError
    from marllb.daemon.tick import PolicySlot
    from marllb.sim.evaluate import check_out_dir, parse_policy

    try:   # before the run: never lose a long evaluation to an unwritable --out
        check_out_dir(Path(args.out))
    except OSError as e:
        msg = str(e) if isinstance(e, OutputError) else f"{e.strerror or e}"
        return _die(f"--out {args.out}: cannot write there: {msg}", EX_CANTCREAT)
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
    sla = args.sla_target_ms
    if sla is not None and not sla > 0:
        return _die(f"--sla-target-ms must be > 0, got {sla}", EX_USAGE)
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
                                       progress=bar.update, executor=executor,
                                       sla_target_s=None if sla is None else sla / 1e3)
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
    mode = DP_MODE_ALIASES.get(args.mode, args.mode)
    if mode not in DP_MODES:
        return _die(f"--mode: unknown mode {args.mode!r}; known: {', '.join(DP_MODES)}",
                    EX_USAGE)
    out = Path(args.out) if args.out else default_summary_path(args.region)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _die(f"--out {out}: {e.strerror or e}", EX_CANTCREAT)
    if trace is None:
        trace = scenario_trace(sc, args.seed)
    dp = Dataplane(sc, trace, args.region, speed=args.speed, policy=DP_MODES[mode],
                   seed=args.seed, replace=args.replace)
    print(f"lbsim dataplane: scenario {sc.name}, {len(trace)} flows over "
          f"{trace.span_s:.1f} s simulated, speed x{args.speed:g}, regions "
          f"{', '.join(dp.names)}", file=sys.stderr, flush=True)
    try:
        res = dp.run()
    except RegionError as e:
        hint = ""
        if "exist" in str(e) and not args.replace:
            hint = ("; if a data plane crashed and left it behind, rerun with --replace "
                    "to take it over")
        return _die(f"{e}{hint}", EX_UNAVAILABLE)
    d = summary_dict(sc, str(args.trace) if args.trace else None, res, dp.names, args.speed)
    write_summary(out, d)
    if args.jct_out:
        import numpy as np

        from marllb.daemon.fsutil import atomic_file

        with atomic_file(args.jct_out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, res.jct)
    m = d["policies"]["dataplane"]
    print(f"lbsim dataplane: {d['completed']} completed, {d['rejected']} rejected, "
          f"{d['unfinished']} unfinished, JCT mean {m['jct_mean_ms']:.1f} ms, "
          f"msg_in accepted {d['msg_in_accepted']}; wrote {out}", file=sys.stderr)
    return 0


def default_summary_path(region: str) -> Path:
    """Not the current directory: the temp dir, named for the region (printed at the end)."""
    return Path(tempfile.gettempdir()) / f"lbsim-dataplane-{region}.json"


def _needs_torch(e: BaseException) -> bool:
    return isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "torch"


def _torch_stub(sub: argparse._SubParsersAction, name: str) -> None:
    """A subcommand whose module needs torch, which is not installed: one clear line."""
    p = sub.add_parser(name, help=f"(needs torch: {TRAIN_EXTRA})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: _die(f"lbsim {name} needs torch, which is not "
                                          f"installed: {TRAIN_EXTRA}", EX_UNAVAILABLE))


def _plugins(sub: argparse._SubParsersAction) -> None:
    import marllb.sim as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not (info.name.startswith("train") or info.name.startswith("cmd_")):
            continue
        try:
            mod = importlib.import_module(f"marllb.sim.{info.name}")
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break eval
            if _needs_torch(e):
                if info.name == "train":
                    _torch_stub(sub, "train")
                continue
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
    pe.add_argument("--out", required=True,
                    help="output directory (checked for writing before the run)")
    pe.add_argument("--sla-target-ms", type=float, help="JCT target of the SLA violation "
                    "share (default: 3 x the mean job's service time on an idle unit core)")
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
    pd.add_argument("--mode", default="sed",
                    help="the data plane's own selection mode with its static weights, used "
                    f"when no fresh daemon weights are in force: {', '.join(DP_MODES)} "
                    "(default sed; the VPP CLI's `lb rl mode` spelling)")
    pd.add_argument("--seed", type=int, default=0, help="trace seed (default 0)")
    pd.add_argument("--replace", action="store_true",
                    help="take over a region of that name left behind by a dead data plane")
    pd.add_argument("--out", default=None,
                    help="summary JSON path (default: TMPDIR/lbsim-dataplane-REGION.json, "
                    "printed at the end)")
    pd.add_argument("--jct-out", metavar="FILE",
                    help="also write every completed job's JCT (seconds, after warm-up) as "
                    "a NumPy .npy file (the demo's plot reads it)")
    pd.set_defaults(func=cmd_dataplane)
    _plugins(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from marllb.daemon.fsutil import OutputError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # recorded by lbsim train
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:   # a trainer imports torch only when it runs
        if not _needs_torch(e):
            raise
        return _die(f"lbsim {args.cmd} needs torch, which is not installed: {TRAIN_EXTRA}",
                    EX_UNAVAILABLE)
    except OutputError as e:   # disk full, permissions: one line; old outputs are intact
        return _die(f"{e.strerror or e} (previous outputs left as they were)", EX_IOERR)


if __name__ == "__main__":
    sys.exit(main())
