"""``lbsim train``: train a learned policy in the simulator and write a checkpoint.

    lbsim train --algo qmix --scenario s1,s2,s3,s4 --minutes 12 --seed 0 --out runs/qmix

Episodes cycle over the given scenarios (one trace seed per episode, from
100000 up: never the seeds ``lbsim eval`` uses, 0..K-1).  Every
``--eval-every`` seconds the greedy policy is evaluated on held-back seeds
(50000+i) and scored against SED (the static weights) on the same traces:
score = -mean over scenarios and seeds of (JCT mean / SED's + JCT p99 / SED's)/2,
so -1.0 is "as good as SED" and higher is better.  The best-scoring policy is
kept as ``DIR/best.safetensors`` + ``best.json``; also written: ``log.csv``
(one row per episode), ``eval.json``, ``curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon import checkpoint as ckpt
from marllb.daemon._core import lib
from marllb.daemon.features import FEATURE_NAMES
from marllb.daemon.nets import FEATURE_SPEC, LEVELS, NOOP_LEVEL, input_dim
from marllb.sim.marl_env import MarlEnv, feature_stats
from marllb.sim.scenario import Scenario, ScenarioError, load_scenario

TRAIN_SEED0 = 100_000
EVAL_SEED0 = 50_000


def _scenarios(spec: str, duration: float | None) -> list[Scenario]:
    out = []
    for name in [s for s in spec.split(",") if s]:
        sc = load_scenario(name)
        if duration is not None:
            sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(
                update={"duration_s": float(duration)})})
        out.append(sc)
    if not out:
        raise ScenarioError(f"--scenario {spec!r}: no scenario named")
    return out


def make_learner(algo: str, env: MarlEnv, seed: int) -> Any:
    import torch

    torch.set_num_threads(1)
    n_agents = env.n_agents_padded
    if algo == "qmix":
        from marllb.sim.qmix import QMIX

        return QMIX(env.obs_dim, env.state_dim, n_agents, len(LEVELS), seed=seed)
    if algo == "sac_gru":
        from marllb.sim.sac_gru import SacGru

        return SacGru(env.obs_dim, env.state_dim, n_agents, len(LEVELS), seed=seed)
    raise ValueError(f"unknown algorithm {algo!r} (qmix, sac_gru)")


def evaluate_greedy(learner: Any, envs: list[MarlEnv], seeds: list[int],
                    base: list[list[tuple[float, float]]] | None = None
                    ) -> tuple[float, list[list[tuple[float, float]]], float]:
    """(score vs base, per-env per-seed (mean, p99) JCT, mean return)."""
    res: list[list[tuple[float, float]]] = []
    rets = []
    rng = np.random.default_rng(0)
    for env in envs:
        row = []
        for s in seeds:
            if learner is None:
                ep = env.rollout(lambda xs: [np.full(x.shape[0], NOOP_LEVEL) for x in xs],
                                 s, record=False)
            else:
                ep = env.rollout(learner.actor(0.0, rng, greedy=True), s, record=False)
            row.append((ep.jct_mean_ms, ep.jct_p99_ms))
            rets.append(ep.ret)
        res.append(row)
    if base is None:
        return -1.0, res, float(np.mean(rets))
    ratios = [(m / bm + p / bp) / 2 for r, br in zip(res, base, strict=True)
              for (m, p), (bm, bp) in zip(r, br, strict=True)]
    return -float(np.mean(ratios)), res, float(np.mean(rets))


def train(algo: str, scenario: str, *, minutes: float, seed: int, out: Path,
          eval_every_s: float = 60.0, eval_seeds: int = 2, duration: float | None = None,
          updates_per_episode: int = 4, quiet: bool = False,
          episodes: int | None = None, init: str | None = None,
          eps_start: float = 1.0) -> dict[str, Any]:
    """Train for ``minutes`` of wall clock (or exactly ``episodes`` episodes,
    which makes a seeded run repeatable); returns the summary written to eval.json."""
    from tqdm import tqdm

    from marllb.sim.qmix import Replay

    scs = _scenarios(scenario, duration)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t_start = time.monotonic()
    init_t: dict[str, np.ndarray] | None = None
    prior: dict[str, Any] = {}
    if init:
        # continue from a checkpoint: its agent, and its normalisation (the
        # inputs must mean what they meant when it was trained)
        init_t, prior = ckpt.load(init)
        ckpt.validate(init_t, prior, init, algorithm=algo)
        mean = np.asarray(prior["features"]["mean"])
        std = np.asarray(prior["features"]["std"])
    else:
        stats = [feature_stats(sc, [TRAIN_SEED0 - 1]) for sc in scs]
        mean = np.mean([m for m, _ in stats], axis=0)
        std = np.sqrt(np.mean([s * s for _, s in stats], axis=0))
    l_max = max(sc.edge.n_lbs for sc in scs)
    m_max = max(sc.n_servers for sc in scs)
    envs = [MarlEnv(sc, mean, std, l_max=l_max, m_max=m_max) for sc in scs]
    learner = make_learner(algo, envs[0], seed)
    if init_t is not None:
        learner.load_policy_params(init_t)
    buf = Replay(learner.cfg.buffer_episodes)
    ev_seeds = [EVAL_SEED0 + i for i in range(eval_seeds)]
    _, base, base_ret = evaluate_greedy(None, envs, ev_seeds)
    best_score, res0, ret0 = evaluate_greedy(learner, envs, ev_seeds, base)
    evals = [{"episode": 0, "wall_s": time.monotonic() - t_start, "score": best_score,
              "return": ret0, "sed": base, "policy": res0}]
    meta = {
        "algorithm": algo,
        "features": {"names": list(FEATURE_NAMES), "spec": FEATURE_SPEC,
                     "mean": mean.tolist(), "std": std.tolist(), "decay_per_s": 0.9},
        "levels": list(LEVELS),
        "hidden": learner.cfg.hidden,
        "input_dim": input_dim(len(LEVELS)),
        "n_servers": m_max,
        "servers_min": 1,
        "servers_max": int(lib.MLB_MAX_SERVERS),
        "mode": "sed",
        "scenario": scenario,
        "seed": seed,
        "command": f"lbsim train --algo {algo} --scenario {scenario} --minutes {minutes:g} "
                   f"--seed {seed}" + (f" --duration {duration:g}" if duration else "")
                   + (f" --init {init} --eps-start {eps_start:g}" if init else ""),
        "previous": ({"command": prior.get("command"), "trained": prior.get("trained")}
                     if init else None),
    }
    best_path = out / "best"
    ckpt.save(best_path, learner.policy_params(), {**meta, "trained": {"episodes": 0,
                                                                      "score": best_score}})
    budget = minutes * 60.0
    log_f = (out / "log.csv").open("w", newline="")
    log = csv.writer(log_f)
    log.writerow(["episode", "wall_s", "scenario", "epsilon", "return", "jct_mean_ms",
                  "jct_p99_ms", "loss"])
    ep_i = 0
    next_eval = time.monotonic() + eval_every_s
    t_train0 = time.monotonic()
    bar = tqdm(total=int(budget), unit="s", disable=quiet, file=sys.stderr,
               desc=f"train {algo}")
    shown = 0
    loss = float("nan")
    while True:
        el = time.monotonic() - t_train0
        if (episodes is None and el >= budget) or (episodes is not None and ep_i >= episodes):
            break
        frac = el / budget if episodes is None else ep_i / episodes
        eps = max(0.05, eps_start - (eps_start - 0.05) * frac / 0.4)
        k = ep_i % len(envs)
        ep = envs[k].rollout(learner.actor(eps, rng), TRAIN_SEED0 + ep_i)
        buf.add(ep)
        ep_i += 1
        if len(buf) >= 2:
            losses = [learner.update(buf, rng) for _ in range(updates_per_episode)]
            loss = float(np.mean(losses))
        log.writerow([ep_i, f"{time.monotonic() - t_start:.2f}", scs[k].name, f"{eps:.3f}",
                      f"{ep.ret:.3f}", f"{ep.jct_mean_ms:.2f}", f"{ep.jct_p99_ms:.2f}",
                      f"{loss:.5f}"])
        log_f.flush()
        last = (ep_i >= episodes) if episodes is not None else \
            time.monotonic() - t_train0 >= budget
        if time.monotonic() >= next_eval or last:
            score, res, ret = evaluate_greedy(learner, envs, ev_seeds, base)
            evals.append({"episode": ep_i, "wall_s": time.monotonic() - t_start,
                          "score": score, "return": ret, "policy": res})
            if score > best_score:
                best_score = score
                ckpt.save(best_path, learner.policy_params(), {
                    **meta, "trained": {"episodes": ep_i, "score": score,
                                        "seconds": round(time.monotonic() - t_start, 1)}})
            bar.set_postfix(score=f"{score:.3f}", best=f"{best_score:.3f}", eps=f"{eps:.2f}")
            next_eval = time.monotonic() + eval_every_s
        now = int(time.monotonic() - t_train0)
        if now > shown:
            bar.update(min(now, int(budget)) - shown)
            shown = min(now, int(budget))
    bar.close()
    log_f.close()
    ckpt.save(out / "last", learner.policy_params(), {**meta, "trained": {"episodes": ep_i}})
    summary = {"algorithm": algo, "scenario": scenario, "episodes": ep_i,
               "seconds": round(time.monotonic() - t_start, 1), "best_score": best_score,
               "sed_return": base_ret, "evals": evals}
    (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    _plot(out)
    return summary


def _plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((out / "log.csv").open()))
    ev = json.loads((out / "eval.json").read_text())["evals"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if rows:
        x = [int(r["episode"]) for r in rows]
        y = [float(r["return"]) for r in rows]
        a1.plot(x, y, lw=0.6, alpha=0.6, label="episode return (exploring)")
        if len(y) >= 10:
            k = np.ones(10) / 10
            a1.plot(x[9:], np.convolve(y, k, mode="valid"), label="moving mean (10)")
    a1.set_xlabel("episode")
    a1.set_ylabel("return (- jobs in system / capacity, summed)")
    a1.legend(fontsize=8)
    a1.grid(True, alpha=0.3)
    a2.plot([e["episode"] for e in ev], [e["score"] for e in ev], "o-")
    a2.axhline(-1.0, color="grey", ls="--", label="SED (static weights)")
    a2.set_xlabel("episode")
    a2.set_ylabel("held-back score (higher is better)")
    a2.legend(fontsize=8)
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
    plt.close(fig)


def cmd_train(args: argparse.Namespace) -> int:
    if args.episodes is not None and args.episodes < 1:
        print(f"lbsim: error: --episodes must be >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    if args.minutes <= 0:
        print(f"lbsim: error: --minutes must be > 0, got {args.minutes}", file=sys.stderr)
        return 2
    if args.algo == "matd3" or args.net == "setnet":
        from marllb.sim.residual_train import cmd_train_setnet

        return cmd_train_setnet(args)
    try:
        s = train(args.algo, args.scenario, minutes=args.minutes, seed=args.seed,
                  out=Path(args.out), eval_every_s=args.eval_every, eval_seeds=args.eval_seeds,
                  duration=args.duration, quiet=args.quiet, episodes=args.episodes,
                  init=args.init, eps_start=args.eps_start)
    except (ScenarioError, ckpt.CheckpointError) as e:
        print(f"lbsim: error: {e}", file=sys.stderr)
        return 78
    print(f"lbsim train: {s['episodes']} episodes in {s['seconds']} s, best held-back score "
          f"{s['best_score']:.3f} (SED = -1.000); wrote {Path(args.out) / 'best.safetensors'}",
          file=sys.stderr)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a learned policy (qmix, sac_gru) in the simulator",
                       description=__doc__.split("\n\n")[0] + " Writes DIR/best.safetensors "
                       "+ best.json (the best held-back checkpoint), log.csv, eval.json, "
                       "curve.png.")
    p.add_argument("--algo", required=True, choices=["qmix", "sac_gru", "matd3"])
    p.add_argument("--net", choices=["gru", "setnet"], default="gru",
                   help="gru: the v1 GRU agent on static weights; setnet: the residual set "
                   "network on --base (matd3 always uses setnet; default gru)")
    p.add_argument("--base", default="wrr_latency",
                   help="setnet: the baseline the residual corrects (default wrr_latency)")
    p.add_argument("--scenario", required=True,
                   help="shipped name or TOML path; a comma-separated list trains on a mix")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget (default 10)")
    p.add_argument("--episodes", type=int, help="stop after exactly this many episodes "
                   "instead of --minutes (repeatable runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--eval-every", type=float, default=60.0,
                   help="seconds between held-back evaluations (default 60)")
    p.add_argument("--eval-seeds", type=int, default=2, help="held-back seeds per scenario")
    p.add_argument("--duration", type=float, help="simulated seconds per training episode "
                   "(default: the scenario's)")
    p.add_argument("--init", help="continue from this checkpoint (its agent and feature "
                   "normalisation; critics/mixer start fresh)")
    p.add_argument("--eps-start", type=float, default=1.0,
                   help="QMIX epsilon at the start (default 1.0; decays to 0.05 over 40%%)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
