"""The main job on its embedded default: the simulated data plane + the real lbd.

    python -m marllb.sim.demo [--scenario s2] [--policy qmix] [--speed 4] [--duration 240]

Starts ``lbsim dataplane`` (which creates and owns one shared-memory region per
LB, exactly as the VPP plugin would), one real ``lbd`` per LB region with the
chosen policy, shows ``lbctl status`` while it runs, and at the end prints the
run's job-completion-time summary next to the same scenario under heuristics
(the fast in-process simulator, same seed).  Everything it starts, it stops,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from marllb.daemon import shm

SCRIPTS = Path(sys.executable).parent


def _tool(name: str) -> list[str]:
    """Our console script next to this interpreter, else ``python -m``."""
    exe = SCRIPTS / name
    if exe.exists():
        return [str(exe)]
    module = {"lbsim": "marllb.sim.cli", "lbd": "marllb.daemon.lbd",
              "lbctl": "marllb.daemon.lbctl"}[name]
    return [sys.executable, "-m", module]


def _say(msg: str) -> None:
    print(f"== {msg}", flush=True)


def _region_names(base: str, n_lbs: int) -> list[str]:
    return [base] + [f"{base}-lb{k}" for k in range(1, n_lbs)]


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _status(sock: Path) -> str:
    r = subprocess.run(_tool("lbctl") + ["--socket", str(sock), "status"],
                       capture_output=True, text=True, timeout=10)
    return (r.stdout or r.stderr).rstrip()


def _heuristic_baseline(scenario: str, duration: float, seed: int,
                        policies: list[str]) -> dict[str, dict[str, float]]:
    from marllb.sim.evaluate import evaluate
    from marllb.sim.scenario import load_scenario

    sc = load_scenario(scenario)
    sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(update={"duration_s": duration})})
    results, _ = evaluate(sc, policies, seeds=1)
    return results


def _row(name: str, s: dict[str, float]) -> str:
    return (f"{name:<22} {s.get('jct_mean_ms', float('nan')):>9.1f} "
            f"{s.get('jct_p99_ms', float('nan')):>9.1f} "
            f"{100 * s.get('rejected_frac', 0.0):>8.2f}% {int(s.get('flows', 0)):>8}")


def run(args: argparse.Namespace) -> int:
    from marllb.sim.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 78
    work = Path(tempfile.mkdtemp(prefix="marllb-demo-"))
    base = f"marllb-demo-{os.getpid()}"
    names = _region_names(base, sc.edge.n_lbs)
    tick_ms = sc.tick_ms / args.speed
    procs: list[subprocess.Popen] = []
    dp_out = work / "dataplane-summary.json"
    logs = [open(work / "dataplane.log", "w")]  # noqa: SIM115 - closed in finally
    try:
        _say(f"scenario {sc.name}: {sc.description}")
        _say(f"starting the simulated data plane ({sc.edge.n_lbs} LB region(s), "
             f"{args.duration:.0f} simulated s at {args.speed:g}x)")
        dp = subprocess.Popen(
            _tool("lbsim") + ["dataplane", "--scenario", args.scenario, "--region", base,
                              "--speed", str(args.speed), "--duration", str(args.duration),
                              "--seed", str(args.seed), "--out", str(dp_out)],
            stdout=logs[0], stderr=subprocess.STDOUT)
        procs.append(dp)
        _wait_for(lambda: all(shm.region_exists(n) for n in names), 30, "data plane", dp)
        socks = []
        for k, name in enumerate(names):
            sock = work / f"lbd-{k}.sock"
            socks.append(sock)
            log = open(work / f"lbd-{k}.log", "w")  # noqa: SIM115
            logs.append(log)
            cmd = _tool("lbd") + ["--region", name, "--socket", str(sock),
                                  "--tick-ms", f"{tick_ms:g}", "--policy", args.policy,
                                  "--metrics", ""]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        _say(f"started {len(names)} lbd process(es) with policy {args.policy!r} "
             f"(tick {sc.tick_ms} ms simulated = {tick_ms:g} ms wall); logs in {work}")
        _wait_for(lambda: socks[0].exists(), 30, "lbd control socket", procs[1])
        last_show = 0.0
        while dp.poll() is None:
            dead = [p for p in procs[1:] if p.poll() is not None]
            if dead:
                print(f"demo: an lbd exited with code {dead[0].returncode}; "
                      f"see {work}", file=sys.stderr)
                return 1
            if time.monotonic() - last_show >= args.status_every:
                last_show = time.monotonic()
                print(f"\n$ lbctl --socket {socks[0]} status", flush=True)
                print(_status(socks[0]), flush=True)
            time.sleep(0.2)
        if dp.returncode != 0:
            print(f"demo: the data plane exited with code {dp.returncode}; "
                  f"see {work / 'dataplane.log'}", file=sys.stderr)
            return 1
        _stop(procs[1:])
        summary = json.loads(dp_out.read_text())
        run_stats = summary["policies"]["dataplane"]
        _say("computing the same scenario under heuristics (fast simulator, same seed) ...")
        base_res = _heuristic_baseline(args.scenario, args.duration, args.seed, args.compare)
        print(f"\n{'policy':<22} {'JCT mean':>9} {'JCT p99':>9} {'rejected':>9} {'flows':>8}")
        print(_row(f"lbd {args.policy} (this run)", run_stats))
        for name, s in base_res.items():
            print(_row(f"{name} (simulator)", s))
        print(f"\nmsg_in accepted by the data plane: {summary.get('msg_in_accepted')}, "
              f"rejected: {summary.get('msg_in_rejected')}; summary JSON: {dp_out}")
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping everything", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"demo: {e}; logs in {work}", file=sys.stderr)
        return 1
    finally:
        _stop(procs)
        for f in logs:
            f.close()
        for n in names:
            shm.unlink(n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="marllb-demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="s2",
                    help="shipped scenario name or TOML file (default s2: static weights "
                         "misconfigured, where a learned policy should help)")
    ap.add_argument("--policy", default="qmix", help="lbd policy (default qmix)")
    ap.add_argument("--speed", type=float, default=4.0,
                    help="simulated seconds per wall second (default 4)")
    ap.add_argument("--duration", type=float, default=240.0,
                    help="simulated seconds of traffic (default 240: about a minute at 4x)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="append", default=None,
                    help="heuristic(s) to compare with (default: sed, lsq, ecmp)")
    ap.add_argument("--status-every", type=float, default=10.0, metavar="SEC",
                    help="wall seconds between lbctl status displays (default 10)")
    args = ap.parse_args(argv)
    if args.speed <= 0 or args.duration <= 0:
        ap.error("--speed and --duration must be > 0")
    args.compare = args.compare or ["sed", "lsq", "ecmp"]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
