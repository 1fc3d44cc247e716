"""Training loop for the residual set-network policies (``lbsim train --net setnet``).

    lbsim train --algo matd3 --scenario gen:train --minutes 40 --seed 0 --out runs/matd3

Episodes draw scenarios from the given source (``gen:train``: the scenario
generator's training distribution, one new scenario per episode; or a
comma-separated list of shipped names / TOML files), trace seeds from 100000
up (never the evaluation seeds).  Every ``--eval-every`` seconds the greedy
policy is scored on a fixed held-back set (other seeds of the same source)
against its own baseline (the untrained residual = ``wrr_latency``):
score = mean over runs of (JCT mean / baseline's + JCT p99 / baseline's) / 2,
1.0 = as good as the baseline, LOWER is better.  The best-scoring policy is
kept as ``DIR/best.safetensors`` + ``best.json``; the untrained one scores
exactly 1.0, so a run that learns nothing useful ships the baseline.
Also written: ``log.csv``, ``eval.json``, ``curve.png``.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon import fsutil, setnet
from marllb.sim.residual_env import Episode, Replay, meta_for, rollout
from marllb.sim.scenario import Scenario, ScenarioError, load_scenario

TRAIN_SEED0 = 100_000
EVAL_SEED0 = 50_000
BASE = "wrr_latency"
HELD_BACK_FIRST = 100    # generator eval seeds past the first 100 (reports use 0..)


def make_learner(algo: str, seed: int) -> Any:
    import torch

    torch.set_num_threads(1)
    if algo == "matd3":
        from marllb.sim.matd3 import MATD3

        return MATD3(seed=seed)
    if algo == "qmix":
        from marllb.sim.qmix import SetQmix

        return SetQmix(seed=seed)
    if algo == "sac_gru":
        from marllb.sim.sac_gru import SetSac

        return SetSac(seed=seed)
    raise ValueError(f"unknown algorithm {algo!r} (matd3, qmix, sac_gru)")


def scenario_source(spec: str, duration: float | None
                    ) -> tuple[Callable[[int], Scenario], Callable[[int], list[Scenario]]]:
    """(seed -> training Scenario, k -> k held-back Scenarios) for ``gen:train``
    (the generator's training distribution; held back: per training family,
    seeds from the top of its training range, past the ones reports use) or a
    comma-separated list of shipped names / TOML files (held back: the same
    scenarios, other trace seeds)."""
    def shorten(sc: Scenario) -> Scenario:
        if duration is None:
            return sc
        return sc.model_copy(update={"traffic": sc.traffic.model_copy(
            update={"duration_s": float(duration)})})

    if spec.startswith("gen:"):
        from marllb.sim import scengen

        if spec != "gen:train":
            raise ScenarioError(f"--scenario {spec!r}: the generator source is gen:train")
        fams = scengen.TRAINING_FAMILIES

        def held(k: int) -> list[Scenario]:
            return [shorten(scengen.eval_scenarios(fams[i % len(fams)], 1,
                                                   first=HELD_BACK_FIRST + i)[0])
                    for i in range(k)]

        return (lambda s: shorten(scengen.training_scenario(s))), held
    scs = [shorten(load_scenario(n)) for n in spec.split(",") if n]
    if not scs:
        raise ScenarioError(f"--scenario {spec!r}: no scenario named")
    return (lambda s: scs[s % len(scs)]), (lambda k: [scs[i % len(scs)] for i in range(k)])


def save_checkpoint(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """``PATH.safetensors`` + ``PATH.json``, each written atomically."""
    from safetensors.numpy import save

    from marllb.daemon.checkpoint import code_version

    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()})
    fsutil.atomic_write_bytes(path.with_name(path.name + ".safetensors"), data)
    fsutil.atomic_write_json(path.with_name(path.name + ".json"),
                             {**meta, "code_version": code_version()})


def _greedy(learner: Any, rng: np.random.Generator) -> Any:
    return learner.actor(0.0, rng) if learner.kind == "continuous" else \
        learner.actor(0.0, rng, greedy=True)


def evaluate(learner: Any | None, runs: list[tuple[Scenario, int]], meta: dict[str, Any],
             zero: dict[str, np.ndarray]) -> list[tuple[float, float]]:
    """(JCT mean, p99) per run; ``learner=None``: the untrained (baseline) network."""
    rng = np.random.default_rng(0)
    out = []
    for sc, s in runs:
        if learner is None:
            def act(x: np.ndarray, up: np.ndarray, k: int) -> tuple[np.ndarray, None]:
                return np.zeros(x.shape[0]), None
            ep = rollout(sc, s, act, zero, meta, record=False)
        else:
            ep = rollout(sc, s, _greedy(learner, rng), learner.policy_params(), meta,
                         record=False)
        out.append((ep.summary["jct_mean_ms"], ep.summary["jct_p99_ms"]))
    return out


def score(res: list[tuple[float, float]], base: list[tuple[float, float]]) -> float:
    r = [(m / bm + p / bp) / 2 for (m, p), (bm, bp) in zip(res, base, strict=True)
         if bm > 0 and bp > 0 and np.isfinite(m) and np.isfinite(p)]
    return float(np.mean(r)) if r else 1.0


def train(algo: str, scenario: str, *, minutes: float, seed: int, out: Path,
          eval_every_s: float = 120.0, eval_runs: int = 6, duration: float | None = None,
          episodes: int | None = None, updates_per_tick: float = 0.25,
          sigma: tuple[float, float] = (0.3, 0.05), base: str = BASE,
          quiet: bool = False) -> dict[str, Any]:
    """Train for ``minutes`` of wall clock (or exactly ``episodes``); returns the
    summary also written to ``DIR/eval.json``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    c0 = time.process_time()
    draw, held_back = scenario_source(scenario, duration)
    learner = make_learner(algo, seed)
    cmd = (f"lbsim train --net setnet --algo {algo} --scenario {scenario} --seed {seed} "
           + (f"--episodes {episodes}" if episodes else f"--minutes {minutes:g}")
           + (f" --duration {duration:g}" if duration else "") + f" --base {base}"
           + f" --eval-every {eval_every_s:g} --eval-seeds {eval_runs}")
    meta = meta_for(learner.kind, algo, base, learner.cfg.hidden, scenario=scenario,
                    seed=seed, command=cmd)
    zero = learner.policy_params()
    ev_runs = [(sc, EVAL_SEED0 + i) for i, sc in enumerate(held_back(eval_runs))]
    base_res = evaluate(None, ev_runs, meta, zero)
    best = 1.0
    evals = [{"episode": 0, "wall_s": round(time.monotonic() - t0, 1), "score": 1.0,
              "baseline": base_res, "policy": base_res}]
    save_checkpoint(out / "best", zero, {**meta, "trained": {"episodes": 0, "score": 1.0}})
    buf = Replay(learner.cfg.buffer_ticks)
    rows: list[list[Any]] = []
    budget = minutes * 60.0
    ep_i = 0
    loss = float("nan")
    next_eval = time.monotonic() + eval_every_s
    t_train = time.monotonic()
    while True:
        el = time.monotonic() - t_train
        if (episodes is None and el >= budget) or (episodes is not None and ep_i >= episodes):
            break
        frac = min(1.0, el / budget if episodes is None else ep_i / episodes)
        sig = sigma[0] + (sigma[1] - sigma[0]) * frac
        s = TRAIN_SEED0 + seed * 10_000 + ep_i
        sc = draw(s)
        ep: Episode = rollout(sc, s, learner.actor(sig, rng), learner.policy_params(), meta)
        buf.add(ep, learner.cfg.gamma)
        ep_i += 1
        n_up = int(updates_per_tick * sum(tr.x.shape[0] for tr in ep.lbs))
        if len(buf) >= 2 * learner.cfg.batch:
            loss = float(np.mean([learner.update(buf, rng) for _ in range(max(1, n_up))]))
        rows.append([ep_i, round(time.monotonic() - t0, 2), sc.name, round(sig, 3),
                     round(ep.ret, 3), round(ep.summary["jct_mean_ms"], 2),
                     round(ep.summary["jct_p99_ms"], 2), round(loss, 5)])
        last = (ep_i >= episodes) if episodes is not None else \
            time.monotonic() - t_train >= budget
        if time.monotonic() >= next_eval or last:
            res = evaluate(learner, ev_runs, meta, zero)
            sc_ = score(res, base_res)
            evals.append({"episode": ep_i, "wall_s": round(time.monotonic() - t0, 1),
                          "cpu_s": round(time.process_time() - c0, 1),
                          "score": sc_, "policy": res})
            if sc_ < best:
                best = sc_
                save_checkpoint(out / "best", learner.policy_params(), {
                    **meta, "trained": {"episodes": ep_i, "score": sc_,
                                        "seconds": round(time.monotonic() - t0, 1)}})
            if not quiet:
                print(f"[{algo}] ep {ep_i} {time.monotonic() - t0:.0f}s score {sc_:.4f} "
                      f"best {best:.4f} sigma {sig:.2f} loss {loss:.4f}", file=sys.stderr,
                      flush=True)
            _write_log(out, rows)
            next_eval = time.monotonic() + eval_every_s
    _write_log(out, rows)
    save_checkpoint(out / "last", learner.policy_params(), {**meta, "trained": {
        "episodes": ep_i}})
    summary = {"algorithm": algo, "scenario": scenario, "base": base, "episodes": ep_i,
               "seconds": round(time.monotonic() - t0, 1),
               "cpu_seconds": round(time.process_time() - c0, 1), "best_score": best,
               "command": cmd, "evals": evals}
    fsutil.atomic_write_json(out / "eval.json", summary)
    _plot(out, rows, evals, algo)
    return summary


def _write_log(out: Path, rows: list[list[Any]]) -> None:
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow(["episode", "wall_s", "scenario", "sigma", "return", "jct_mean_ms",
                "jct_p99_ms", "loss"])
    w.writerows(rows)
    fsutil.atomic_write_text(out / "log.csv", f.getvalue())


def _plot(out: Path, rows: list[list[Any]], evals: list[dict[str, Any]], algo: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if rows:
        x = [r[0] for r in rows]
        y = [r[4] for r in rows]
        a1.plot(x, y, lw=0.6, alpha=0.6, label="episode return (exploring)")
    a1.set_xlabel("episode")
    a1.set_ylabel("return (- jobs in system / capacity, summed)")
    a1.legend(fontsize=8)
    a1.grid(True, alpha=0.3)
    a2.plot([e["wall_s"] / 60 for e in evals], [e["score"] for e in evals], "o-", label=algo)
    a2.axhline(1.0, color="grey", ls="--", label="baseline (untrained residual)")
    a2.set_xlabel("wall-clock minutes")
    a2.set_ylabel("held-back JCT ratio to baseline (lower is better)")
    a2.legend(fontsize=8)
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    with fsutil.atomic_file(out / "curve.png") as p:
        fig.savefig(p, dpi=100, format="png")
    plt.close(fig)


def cmd_train_setnet(args: Any) -> int:
    """``lbsim train --net setnet``: the residual set-network learners."""
    from marllb.daemon.policies import PolicyError
    from marllb.sim.scenario import ScenarioError

    try:
        s = train(args.algo, args.scenario, minutes=args.minutes, seed=args.seed,
                  out=Path(args.out), eval_every_s=args.eval_every,
                  eval_runs=max(args.eval_seeds, 1), duration=args.duration,
                  episodes=args.episodes, base=args.base, quiet=args.quiet)
    except (ScenarioError, PolicyError) as e:
        print(f"lbsim: error: {e}", file=sys.stderr)
        return 78
    print(f"lbsim train: {s['episodes']} episodes in {s['seconds']} s, best held-back "
          f"score {s['best_score']:.4f} (baseline {args.base} = 1.0000, lower is better); "
          f"wrote {Path(args.out) / 'best.safetensors'}", file=sys.stderr)
    return 0


__all__ = ["BASE", "cmd_train_setnet", "evaluate", "scenario_source", "setnet", "train"]
