"""The main job on its embedded default: the simulated data plane + the real lbd.

Starts ``lbsim dataplane`` (which creates and owns one shared-memory region per
LB, exactly as the VPP plugin would) and one real ``lbd`` per LB region with
the chosen policy, shows ``lbctl status`` of every lbd while it runs, and at
the end compares the run's job-completion times (JCT) with the same scenario
under heuristics in the fast simulator, over several seeds, and prints a
verdict.  Writes to --out: a JCT plot, a weights plot, the verdict, the
numbers and every process's log.  Everything it starts, it stops, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon import shm
from marllb.daemon.control import ControlError, request
from marllb.daemon.fsutil import atomic_file, atomic_write_json, atomic_write_text

SCRIPTS = Path(sys.executable).parent
# two-sided 95% Student t quantiles by degrees of freedom (no scipy dependency)
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
       10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


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


def _tail(path: Path, n: int = 12) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join(f"    | {ln}" for ln in lines)


class StartError(RuntimeError):
    def __init__(self, msg: str, log: Path | None = None) -> None:
        super().__init__(msg)
        self.log = log


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise StartError(f"{what}: the process exited with code {proc.returncode}", log)
        if time.monotonic() > deadline:
            raise StartError(f"{what}: not ready after {timeout:.0f} s", log)
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


class WeightSampler(threading.Thread):
    """Polls every lbd's status for the weights published and in force (the plot)."""

    def __init__(self, socks: list[Path], every: float = 0.5) -> None:
        super().__init__(name="weights", daemon=True)
        self.socks, self.every = socks, every
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.wait(self.every):
            for k, sock in enumerate(self.socks):
                try:
                    st = request(str(sock), {"cmd": "status"}, timeout=2)["result"]
                except (ControlError, OSError, KeyError):
                    continue
                self.samples.append({
                    "wall_s": round(time.monotonic() - t0, 3), "lb": k,
                    "in_force": [s["weight_in_force"] for s in st.get("servers", [])],
                    "published": [s["weight"] for s in st.get("servers", [])]})


# -- the comparison --------------------------------------------------------------------

def _sim_runs(sc: Any, policies: dict[str, str | None], seeds: list[int]
              ) -> tuple[dict[str, list[dict[str, float]]], dict[str, np.ndarray]]:
    """Each policy on each seed's trace in the fast simulator: per-seed summaries,
    and the first seed's JCTs (for the plot)."""
    from marllb.sim.cluster import Cluster, scenario_trace

    traces = {s: scenario_trace(sc, s) for s in seeds}
    per: dict[str, list[dict[str, float]]] = {}
    jct: dict[str, np.ndarray] = {}
    for label, ckpt in policies.items():
        name = label.split("=")[0]
        per[label] = []
        for s in seeds:
            res = Cluster(sc, traces[s], name, seed=s, checkpoint=ckpt).run()
            per[label].append(res.summary())
            if s == seeds[0]:
                jct[label] = res.jct
    return per, jct


def _pct(x: float, base: float) -> float:
    return 100.0 * (x / base - 1.0) if base > 0 else math.nan


def paired_ci(xs: list[float], bases: list[float]) -> tuple[float, float, float]:
    """Mean per-seed % change of xs vs bases and its 95% t interval (NaN width for 1 seed)."""
    d = np.array([_pct(x, b) for x, b in zip(xs, bases, strict=True)])
    m = float(d.mean())
    if d.size < 2:
        return m, math.nan, math.nan
    df = d.size - 1
    t = T95.get(df) or T95[max(k for k in T95 if k <= df)]
    half = t * float(d.std(ddof=1)) / math.sqrt(d.size)
    return m, m - half, m + half


def verdict(label: str, base: str, per: dict[str, list[dict[str, float]]],
            live: dict[str, float] | None, live_base: dict[str, float] | None,
            seed: int) -> str:
    """One line: the learned/chosen policy against the baseline, honestly."""
    k = len(per[label])
    parts = []
    for key, short in (("jct_mean_ms", "mean"), ("jct_p99_ms", "p99")):
        m, lo, hi = paired_ci([r[key] for r in per[label]], [r[key] for r in per[base]])
        ci = f" (95% CI {lo:+.0f}%..{hi:+.0f}%)" if not math.isnan(lo) else ""
        parts.append(f"{short} {m:+.0f}%{ci}")
    m, lo, hi = paired_ci([r["jct_mean_ms"] for r in per[label]],
                          [r["jct_mean_ms"] for r in per[base]])
    if math.isnan(lo):
        word = "one seed: no confidence interval"
    elif hi < 0:
        word = "better"
    elif lo > 0:
        word = "worse"
    else:
        word = "no clear difference"
    line = (f"verdict: {label} vs {base.upper()}: JCT {', '.join(parts)} over {k} seed(s) "
            f"in the simulator -> {word}")
    if live is not None and live_base is not None:
        line += (f"; this live run (seed {seed}): mean "
                 f"{_pct(live['jct_mean_ms'], live_base['jct_mean_ms']):+.0f}%, p99 "
                 f"{_pct(live['jct_p99_ms'], live_base['jct_p99_ms']):+.0f}%")
    return line


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def table(rows: list[tuple[str, dict[str, float], dict[str, float]]], base: str = "base") -> str:
    """rows: (label, stats, baseline stats for the % columns)."""
    vs = f"vs {base.upper()}"
    hdr = (f"{'policy':<34} {'JCT mean':>9} {vs:>8} {'JCT p99':>9} {vs:>8} "
           f"{'rejected':>9} {'flows':>7}\n{'':<34} {'(ms)':>9} {'':>8} {'(ms)':>9}")
    out = [hdr]
    for label, s, b in rows:
        out.append(f"{label:<34} {s['jct_mean_ms']:>9.1f} "
                   f"{_pct(s['jct_mean_ms'], b['jct_mean_ms']):>+7.1f}% "
                   f"{s['jct_p99_ms']:>9.1f} {_pct(s['jct_p99_ms'], b['jct_p99_ms']):>+7.1f}% "
                   f"{100 * s.get('rejected_frac', 0.0):>8.2f}% {int(s.get('flows', 0)):>7}")
    return "\n".join(out)


# -- plots ---------------------------------------------------------------------------------

def plot_jct(jcts: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """CCDF P(JCT > x) on log-log axes: the tail, where policies differ, is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    curves: dict[str, np.ndarray] = {}
    for label, j in jcts.items():   # identical runs (sed = lsq on equal weights): one curve
        j = np.sort(np.asarray(j, dtype=float) * 1e3)
        same = next((k for k, v in curves.items() if np.array_equal(v, j)), None)
        if same is not None:
            curves[f"{same} = {label.split(' ')[0]}"] = curves.pop(same)
        else:
            curves[label] = j
    for label, j in curves.items():
        if j.size == 0:
            continue
        ccdf = 1.0 - np.arange(j.size) / j.size
        ax.step(j, ccdf, where="post", lw=2.2 if label.startswith("lbd") else 1.3,
                label=f"{label} (p99 {np.percentile(j, 99):.0f} ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nonempty = [j for j in curves.values() if j.size]
    if nonempty:   # the fastest 1% carry no information about the tail: start above them
        ax.set_xlim(left=max(1e-3, min(float(np.percentile(j, 1)) for j in nonempty) / 2))
    ax.set_xlabel("job completion time (ms, log)")
    ax.set_ylabel("fraction of jobs slower than x (CCDF, log)")
    ax.axhline(0.01, color="grey", lw=0.6, ls=":")
    ax.text(ax.get_xlim()[0], 0.011, " p99", color="grey", fontsize=8, va="bottom")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_weights(samples: list[dict[str, Any]], speed: float, caps: list[float],
                 path: Path, title: str) -> Path | None:
    """Small multiples: one panel per server, the weight in force at each LB over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marllb.sim.evaluate import server_panels

    n = max((len(s["in_force"]) for s in samples), default=0)
    if n == 0:
        return None
    lbs = sorted({s["lb"] for s in samples})
    fig, panels = server_panels(plt, n, row_h=1.5, head=0.8)
    for j, ax in enumerate(panels):
        for lb in lbs:
            pts = [(s["wall_s"] * speed, s["in_force"][j]) for s in samples
                   if s["lb"] == lb and len(s["in_force"]) > j]
            if pts:
                t, w = zip(*pts, strict=True)
                ax.plot(t, w, lw=1.1, drawstyle="steps-post", label=f"LB {lb}")
        ax.set_ylim(bottom=0)
        cap = f", {caps[j]:g} cores" if j < len(caps) else ""
        ax.set_title(f"server {j}{cap}", fontsize=8, loc="left")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    panels[0].legend(fontsize=7)
    fig.supxlabel("simulated time (s)", fontsize=9)
    fig.supylabel("weight in force", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# -- the run -------------------------------------------------------------------------------

def _start(args: argparse.Namespace, sc: Any, out: Path, rt: Path, base: str,
           names: list[str], procs: list[subprocess.Popen], logs: list[Any]) -> list[Path]:
    tick_ms = sc.tick_ms / args.speed
    dp_log = out / "dataplane.log"
    logs.append(open(dp_log, "w"))  # noqa: SIM115 - closed by the caller
    _say(f"starting the simulated data plane ({sc.edge.n_lbs} LB region(s), "
         f"{args.duration:g} simulated s at {args.speed:g}x)")
    dp = subprocess.Popen(
        _tool("lbsim") + ["dataplane", "--scenario", args.scenario, "--region", base,
                          "--speed", str(args.speed), "--duration", str(args.duration),
                          "--seed", str(args.seed), "--out", str(out / "dataplane-summary.json"),
                          "--jct-out", str(out / "dataplane-jct.npy")],
        stdout=logs[-1], stderr=subprocess.STDOUT)
    procs.append(dp)
    _wait_for(lambda: all(shm.region_exists(n) for n in names), 30, "data plane", dp, dp_log)
    socks = []
    spec = args.policy + (f"={args.checkpoint}" if args.checkpoint else "")
    for k, name in enumerate(names):
        sock = rt / f"lbd-{k}.sock"
        socks.append(sock)
        log = out / f"lbd-{k}.log"
        logs.append(open(log, "w"))  # noqa: SIM115
        cmd = _tool("lbd") + ["--region", name, "--socket", str(sock), "--tick-ms",
                              f"{tick_ms:g}", "--policy", spec, "--metrics", ""]
        procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT))
    for k, sock in enumerate(socks):
        _wait_for(lambda s=sock: s.exists(), 30, f"lbd {k} (region {names[k]})", procs[1 + k],
                  out / f"lbd-{k}.log")
    _say(f"started {len(names)} lbd process(es) with policy {spec} (tick {sc.tick_ms:g} ms "
         f"simulated = {tick_ms:g} ms wall; TTL derived from the observed data-plane clock)")
    return socks


def _live(args: argparse.Namespace, procs: list[subprocess.Popen], socks: list[Path],
          out: Path) -> None:
    dp = procs[0]
    last_show = 0.0
    while dp.poll() is None:
        for k, p in enumerate(procs[1:]):
            if p.poll() is not None:
                raise StartError(f"lbd {k} exited with code {p.returncode}",
                                 out / f"lbd-{k}.log")
        if time.monotonic() - last_show >= args.status_every:
            last_show = time.monotonic()
            for sock in socks:
                print(f"\n$ lbctl --socket {sock} status", flush=True)
                print(_status(sock), flush=True)
        time.sleep(0.2)
    if dp.returncode != 0:
        raise StartError(f"the data plane exited with code {dp.returncode}",
                         out / "dataplane.log")


def _report(args: argparse.Namespace, sc: Any, out: Path, sampler: WeightSampler) -> None:
    summary = json.loads((out / "dataplane-summary.json").read_text())
    live = summary["policies"]["dataplane"]
    label = args.policy + (f"={args.checkpoint}" if args.checkpoint else "")
    seeds = list(range(args.seed, args.seed + args.seeds))
    pols: dict[str, str | None] = {label: args.checkpoint}
    for c in args.compare:
        pols.setdefault(c, None)
    base = next((c for c in args.compare if c != args.policy), args.compare[0])
    _say(f"the same scenario in the fast simulator: {', '.join(pols)} x {len(seeds)} seeds "
         f"({seeds[0]}..{seeds[-1]}) ...")
    sim = sc.model_copy(update={"traffic": sc.traffic.model_copy(
        update={"duration_s": args.duration})})
    per, jcts = _sim_runs(sim, pols, seeds)
    live_base = per[base][0]
    rows = [(f"lbd {label} (live, seed {args.seed})", live, live_base)]
    means = {p: {k: _mean(v, k) for k in v[0]} for p, v in per.items()}
    for p in pols:
        rows.append((f"{p} (simulator, {len(seeds)} seeds)", means[p], means[base]))
    notes = [f"'vs {base.upper()}' is the change against {base.upper()} (live run: same seed; "
             f"simulator rows: mean over the same {len(seeds)} seeds); negative is faster."]
    if {"sed", "lsq"} <= set(pols) and len({w for w in _static_weights(sc)}) == 1:
        notes.append("sed and lsq are identical here: with equal static weights SED's "
                     "argmin (active+1)/weight is LSQ's argmin active.")
    notes.append("The simulator rows are seeded and repeat exactly; the live run does not: "
                 "lbd's ticks land at wall-clock instants that differ from run to run, so a "
                 "learned policy sees slightly different states and its numbers move by a "
                 "few percent between runs.  The seeds' confidence interval is the verdict.")
    line = verdict(label, base, per, live, live_base, args.seed)
    adaptive = "wrr_latency"      # the adaptive baseline a learned policy must beat too
    if adaptive in per and adaptive not in (base, label):
        line += "\n" + verdict(label, adaptive, per, None, None, args.seed)
    jct_plot = plot_jct({f"lbd {label} (live)": np.load(out / "dataplane-jct.npy"),
                         **{f"{p} (simulator)": jcts[p] for p in pols}},
                        out / "jct_ccdf.png",
                        f"{sc.name}: job completion time tail, seed {args.seed}")
    w_plot = plot_weights(sampler.samples, args.speed, _capacities(sc), out / "weights.png",
                          f"{sc.name}: weights in force, lbd {label} (live)")
    atomic_write_json(out / "weights.json", {"speed": args.speed, "samples": sampler.samples})
    atomic_write_json(out / "comparison.json", {
        "scenario": sc.name, "seeds": seeds, "baseline": base, "live": live,
        "simulator": per, "verdict": line})
    text = table(rows, base) + "\n\n" + "\n".join(notes) + "\n\n" + line + "\n"
    atomic_write_text(out / "verdict.txt", text)
    print("\n" + text)
    print(f"msg_in accepted by the data plane: {summary.get('msg_in_accepted')}, "
          f"rejected: {summary.get('msg_in_rejected')}")
    print(f"JCT plot:     {jct_plot}")
    print(f"weights plot: {w_plot or '(no samples)'}")
    print(f"everything:   {out}/")


def _static_weights(sc: Any) -> list[float]:
    return [float(g.static_weight) for g in sc.servers for _ in range(g.count)]


def _capacities(sc: Any) -> list[float]:
    return [float(g.cores) for g in sc.servers for _ in range(g.count)]


def run(args: argparse.Namespace) -> int:
    from marllb.sim.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 78
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"demo: --out {out}: {e.strerror or e}", file=sys.stderr)
        return 73
    _say(f"scenario {sc.name}: {sc.description}; writing to {out}/")
    rt = Path(tempfile.mkdtemp(prefix="marllb-demo-"))   # sockets: short paths
    base = f"marllb-demo-{os.getpid()}"
    names = _region_names(base, sc.edge.n_lbs)
    procs: list[subprocess.Popen] = []
    logs: list[Any] = []
    sampler: WeightSampler | None = None
    try:
        socks = _start(args, sc, out, rt, base, names, procs, logs)
        sampler = WeightSampler(socks)
        sampler.start()
        _live(args, procs, socks, out)
        sampler.stop_event.set()
        _stop(procs[1:])
        _report(args, sc, out, sampler)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping everything", file=sys.stderr)
        return 130
    except StartError as e:
        tail = _tail(e.log) if e.log else ""
        print(f"demo: {e}" + (f"; last lines of {e.log}:\n{tail}" if tail else
                              f"; logs in {out}/"), file=sys.stderr)
        return 1
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        _stop(procs)
        for f in logs:
            f.close()
        for n in names:
            shm.unlink(n)
        for p in rt.glob("*"):
            p.unlink(missing_ok=True)
        rt.rmdir()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=os.environ.get("MARLLB_DEMO_PROG", "python -m marllb.sim.demo"),
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="s2",
                    help="shipped scenario name or TOML file (default s2: static weights "
                         "misconfigured, where a learned policy should help)")
    ap.add_argument("--policy", default="qmix", metavar="NAME[=CHECKPOINT]",
                    help="lbd policy, optionally with a checkpoint you trained (default qmix "
                    "with its shipped checkpoint)")
    ap.add_argument("--checkpoint", metavar="PATH",
                    help="checkpoint for --policy (same as NAME=PATH); relative to here")
    ap.add_argument("--out", metavar="DIR",
                    help="output folder (default ./marllb-demo-SCENARIO-POLICY-TIME)")
    ap.add_argument("--speed", type=float, default=4.0,
                    help="simulated seconds per wall second (default 4)")
    ap.add_argument("--duration", type=float, default=240.0,
                    help="simulated seconds of traffic (default 240: about a minute at 4x)")
    ap.add_argument("--seed", type=int, default=0, help="trace seed of the live run (default 0)")
    ap.add_argument("--seeds", type=int, default=5,
                    help="simulator seeds for the comparison and its 95%% CI (default 5)")
    ap.add_argument("--compare", action="append", default=None, metavar="HEURISTIC",
                    help="heuristic(s) to compare with; the first is the baseline "
                    "(default: sed, wrr_latency, lsq, ecmp)")
    ap.add_argument("--status-every", type=float, default=10.0, metavar="SEC",
                    help="wall seconds between lbctl status displays (default 10)")
    return ap


def _check_policies(args: argparse.Namespace) -> str | None:
    """A policy that cannot load would have lbd run its fallback: refuse it up front."""
    from marllb.daemon.policies import PolicyError
    from marllb.daemon.tick import PolicySlot

    for name, ckpt in [(args.policy, args.checkpoint)] + [(c, None) for c in args.compare]:
        try:
            PolicySlot.build_strict(name, ckpt, "sed")
        except PolicyError as e:
            return f"--policy {name}{'=' + ckpt if ckpt else ''}: {e}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.speed <= 0 or args.duration <= 0:
        ap.error("--speed and --duration must be > 0")
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if "=" in args.policy:
        args.policy, _, ck = args.policy.partition("=")
        args.checkpoint = args.checkpoint or ck or None
    if args.checkpoint:   # relative to where the user typed it
        args.checkpoint = os.path.abspath(os.path.expanduser(args.checkpoint))
        if not (os.path.exists(args.checkpoint)
                or os.path.exists(args.checkpoint + ".safetensors")):
            ap.error(f"--checkpoint {args.checkpoint}: no such file")
    args.compare = args.compare or ["sed", "wrr_latency", "lsq", "ecmp"]
    err = _check_policies(args)
    if err:
        print(f"demo: {err}", file=sys.stderr)
        return 78
    if args.out is None:
        scen = Path(args.scenario).stem
        args.out = f"marllb-demo-{scen}-{args.policy}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.out = os.path.abspath(args.out)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
