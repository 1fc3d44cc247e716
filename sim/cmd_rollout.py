"""``lbsim rollout``: the safe-rollout cycle in the simulator.

    lbsim rollout --scenario rollout --incumbent sed --candidate lsq --canary-lbs 0 --out DIR

Every LB runs the daemon's real tick pipeline in-process with a
``CanarySlot`` (daemon/canary.py) over one shared in-memory board: the LBs in
``--canary-lbs`` serve the candidate, the others the incumbent, and the guard
rolls the canary back or promotes the candidate fleet-wide (auto_promote) as
the plan says.  Writes ``report.json`` (the guard's decisions with the tick
and reason, JCT per LB before/after), ``rollout.md`` and ``rollout.png``
(weights per LB over time, JCT per LB over time, the decisions marked).

``inverted_static`` is a deliberately bad policy for these drills: weights
inversely proportional to the static weights (the biggest server gets the
least traffic).  It is registered only when this module is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon.canary import CanaryGuard, CanaryPlan, CanarySlot, MemoryBoard, PlanError
from marllb.daemon.policies.base import Policy, register_policy
from marllb.sim.cluster import Cluster, SimResult, scenario_trace
from marllb.sim.lb import SimDaemon, SimLB
from marllb.sim.scenario import Scenario, ScenarioError, load_scenario


@register_policy("inverted_static")
class InvertedStatic(Policy):
    """A deliberately bad policy for rollout drills: weight = (max static / static)^2."""

    def act(self, features: Any) -> np.ndarray:
        s = np.maximum(np.asarray(features.static_weight, dtype=np.float64), 1e-3)
        return (s.max() / s) ** 2


@dataclass
class RolloutResult:
    result: SimResult
    guards: list[CanaryGuard]
    tick_t: list[float] = field(default_factory=list)
    weights: list[list[np.ndarray]] = field(default_factory=list)   # per tick, per LB
    serving: list[list[str]] = field(default_factory=list)          # per tick, per LB

    def decisions(self) -> list[dict[str, Any]]:
        out = []
        for g in self.guards:
            for d in g.decisions:
                out.append({"lb": g.lb, "window": d.window, "verdict": d.verdict,
                            "reason": d.reason,
                            "t_s": round(d.t_ns / 1e9 - T0_S, 2)})
        return sorted(out, key=lambda d: d["t_s"])

    def jct_by_lb(self, t0: float, t1: float) -> dict[str, float]:
        """Mean JCT (ms) of flows through each LB that arrived in [t0, t1)."""
        r = self.result
        ok = np.isfinite(r.done) & (r.arrival >= t0) & (r.arrival < t1)
        out = {}
        for k in range(len(self.guards)):
            m = ok & (r.lb == k)
            out[f"lb{k}"] = float((r.done[m] - r.arrival[m]).mean() * 1e3) if m.any() \
                else float("nan")
        return out


T0_S = 1.0   # cluster.T0_NS in seconds: the data-plane clock at simulated time 0


def simulate(sc: Scenario, plan: CanaryPlan, *, seed: int = 0,
             checkpoints: dict[str, str] | None = None) -> RolloutResult:
    """Run ``sc`` with every LB under ``plan`` (lb ids are ``lb0``, ``lb1``, ...)."""
    from marllb.daemon.tick import PolicySlot

    checkpoints = checkpoints or {}
    board = MemoryBoard()
    trace = scenario_trace(sc, seed)
    cluster = Cluster(sc, trace, plan.incumbent, seed=seed)
    res = RolloutResult(result=None, guards=[])  # type: ignore[arg-type]
    daemons: list[SimDaemon] = []

    def make_slot(spec: str) -> PolicySlot:
        name, _, ck = spec.partition("=")
        return PolicySlot(name, ck or checkpoints.get(name), "sed")

    def hook(t: float, now_ns: int, lbs: list[SimLB]) -> bool:
        if not daemons:
            for k, lb in enumerate(lbs):
                d = SimDaemon(lb, "sed", ttl_ns=int(sc.ttl_ms * 1e6), seed=seed * 1000 + k)
                g = CanaryGuard(plan, f"lb{k}", board)
                slot = CanarySlot(g, make_slot)
                d.slot = d.pipeline.slot = slot  # type: ignore[assignment]
                res.guards.append(g)
                daemons.append(d)
        for lb, d in zip(lbs, daemons, strict=True):
            lb.timer(now_ns)
            d.tick()
        res.tick_t.append(t)
        res.weights.append([d.last_weights if d.last_weights is not None else
                            np.zeros(0) for d in daemons])
        res.serving.append([g.serving for g in res.guards])
        return True

    res.result = cluster.run(on_tick=hook)
    return res


def _plot(res: RolloutResult, sc: Scenario, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marllb.daemon.fsutil import atomic_file

    n_lb = len(res.guards)
    fig, axes = plt.subplots(n_lb + 1, 1, figsize=(9, 2.0 * (n_lb + 1)), sharex=True)
    t = np.asarray(res.tick_t)
    for k in range(n_lb):
        ax = axes[k]
        rows = [w[k] for w in res.weights]
        n = max((r.shape[0] for r in rows), default=0)
        if n:
            W = np.array([r if r.shape[0] == n else np.full(n, np.nan) for r in rows])
            W = W / np.nanmax(W, axis=1, keepdims=True).clip(1e-9)
            ax.imshow(W.T, aspect="auto", origin="lower", cmap="viridis",
                      extent=(t[0], t[-1], -0.5, n - 0.5), vmin=0, vmax=1,
                      interpolation="nearest")
        ax.set_ylabel(f"lb{k}\nserver")
        serving = [s[k] for s in res.serving]
        changes = [i for i in range(1, len(serving)) if serving[i] != serving[i - 1]]
        ax.set_title(f"lb{k}: weights (relative to the LB's max); serving "
                     f"{serving[0]}" + "".join(f" -> {serving[i]} at {t[i]:.0f}s"
                                               for i in changes), fontsize=8, loc="left")
    ax = axes[-1]
    r = res.result
    ok = np.isfinite(r.done)
    edges = np.arange(0, float(r.arrival.max()) + 5, 5.0)
    for k in range(n_lb):
        m = ok & (r.lb == k)
        idx = np.digitize(r.arrival[m], edges) - 1
        jct = (r.done[m] - r.arrival[m]) * 1e3
        means = [jct[idx == i].mean() if np.any(idx == i) else np.nan
                 for i in range(len(edges) - 1)]
        ax.plot(edges[:-1] + 2.5, means, label=f"lb{k}", lw=1.2)
    canaries = {g.lb for g in res.guards if g.role == "candidate"}
    for d in (d for d in res.decisions() if d["lb"] in canaries):
        ax.axvline(d["t_s"], color="red" if d["verdict"] == "rolled_back" else "green",
                   ls="--", lw=0.8)
        ax.text(d["t_s"], ax.get_ylim()[1] * 0.9, f" canary {d['lb']}: {d['verdict']}",
                fontsize=7)
    ax.set_ylabel("mean JCT (ms)\nper 5 s")
    ax.set_xlabel(f"simulated time (s) — scenario {sc.name}")
    ax.legend(fontsize=7, ncol=n_lb)
    fig.tight_layout()
    path = out / "rollout.png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def report(res: RolloutResult, sc: Scenario, plan: CanaryPlan, out: Path) -> dict[str, Any]:
    from marllb.daemon.fsutil import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    decs = res.decisions()
    end = float(res.result.arrival.max())
    first = decs[0]["t_s"] if decs else end
    rep = {
        "scenario": sc.name, "plan": plan.to_dict(), "decisions": decs,
        "final": {g.lb: g.status() for g in res.guards},
        "jct_ms_before_first_decision": res.jct_by_lb(sc.warmup_s, first),
        "jct_ms_after_first_decision": res.jct_by_lb(first + plan.window_s, end),
    }
    atomic_write_json(out / "report.json", rep)
    lines = [f"# Rollout drill: {plan.candidate} canaried against {plan.incumbent} "
             f"on {', '.join(plan.lbs)} ({sc.name})", "",
             "| t (s) | LB | verdict | reason |", "|---|---|---|---|"]
    lines += [f"| {d['t_s']:.1f} | {d['lb']} | {d['verdict']} | {d['reason']} |" for d in decs]
    lines += ["", "| LB | mean JCT before (ms) | after (ms) |", "|---|---|---|"]
    for lb in rep["jct_ms_before_first_decision"]:
        lines.append(f"| {lb} | {rep['jct_ms_before_first_decision'][lb]:.1f} | "
                     f"{rep['jct_ms_after_first_decision'][lb]:.1f} |")
    atomic_write_text(out / "rollout.md", "\n".join(lines) + "\n")
    rep["plot"] = str(_plot(res, sc, out))
    return rep


def cmd_rollout(args: argparse.Namespace) -> int:
    try:
        sc = load_scenario(args.scenario)
        lbs = tuple(f"lb{int(x)}" for x in args.canary_lbs.split(",") if x.strip())
        plan = CanaryPlan.from_dict({
            "candidate": args.candidate, "incumbent": args.incumbent, "lbs": list(lbs),
            "threshold": args.threshold, "window_s": args.window_s,
            "min_windows": args.min_windows}, where="command line")
    except (ScenarioError, PlanError, ValueError) as e:
        print(f"lbsim rollout: {e}", file=sys.stderr)
        return 78 if isinstance(e, ScenarioError) else 2
    from marllb.daemon.policies import discover

    known = discover()
    for spec in (plan.candidate, plan.incumbent):
        name = spec.partition("=")[0]
        if name not in known:
            print(f"lbsim rollout: unknown policy {name!r}; known: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
    res = simulate(sc, plan, seed=args.seed)
    rep = report(res, sc, plan, Path(args.out))
    for d in rep["decisions"]:
        print(f"t={d['t_s']:7.1f}s  {d['lb']:5s} {d['verdict']:12s} {d['reason']}")
    if not rep["decisions"]:
        print("no guard decision during the run (the incumbent stays)")
    print(json.dumps({"jct_ms_before": rep["jct_ms_before_first_decision"],
                      "jct_ms_after": rep["jct_ms_after_first_decision"]}))
    print(f"wrote {args.out}/report.json, rollout.md, rollout.png")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollout", help="simulate a canary rollout with the automatic guard",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenario", default="rollout", help="scenario name or TOML path")
    p.add_argument("--incumbent", default="sed", help="policy the fleet runs now")
    p.add_argument("--candidate", default="lsq", help="policy to canary (NAME[=CHECKPOINT])")
    p.add_argument("--canary-lbs", default="0", help="comma-separated LB indexes on the candidate")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="roll back when worse by more than this fraction")
    p.add_argument("--window-s", type=float, default=CanaryPlan.window_s,
                   help="comparison window (s)")
    p.add_argument("--min-windows", type=int, default=CanaryPlan.min_windows,
                   help="windows compared before a statistical verdict")
    p.add_argument("--seed", type=int, default=0, help="trace seed")
    p.add_argument("--out", default="rollout-report", help="output directory")
    p.set_defaults(func=cmd_rollout)
