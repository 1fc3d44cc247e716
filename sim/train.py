"""``lbsim train``: train a learned policy in the simulator and write a checkpoint.

    lbsim train --algo qmix --scenario s1,s2,s3,s4 --minutes 12 --seed 0 --out runs/qmix
    lbsim train --resume runs/qmix            # continue an interrupted run

Episodes cycle over the given scenarios (one trace seed per episode, from
100000 up: never the seeds ``lbsim eval`` uses, 0..K-1).  Every
``--eval-every`` seconds the greedy policy is evaluated on held-back seeds
(50000+i) and scored against SED (the static weights) on the same traces:
score = -mean over scenarios and seeds of (JCT mean / SED's + JCT p99 / SED's)/2,
so -1.0 is "as good as SED" and higher is better.  The untrained network is
evaluated too (a reference in ``eval.json``) but "best" is chosen among
TRAINED evaluations only: ``DIR/best.safetensors`` (one file, metadata
embedded; ``best.json`` is a readable copy) records the command actually run.
Also written: ``last.safetensors``, ``log.csv`` (one row per episode,
CleanRL-style: global_step, episodic return, epsilon, loss), ``eval.json``,
``curve.png`` (and TensorBoard events under ``DIR/tb`` when tensorboard is
installed), and ``state/`` (learner, optimizer, replay and progress, every
``--state-every`` minutes, at the end and on Ctrl-C) for ``--resume``.

Every file is written atomically (temp file, fsync, rename): a kill at any
moment leaves the previous complete file or the new one.  Ctrl-C stops after
saving a consistent folder and says how to resume; a full disk is one line
and the previous outputs stay as they were.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon import checkpoint as ckpt
from marllb.daemon._core import lib
from marllb.daemon.features import FEATURE_NAMES
from marllb.daemon.fsutil import (
    OutputError,
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    existing_dir,
)
from marllb.daemon.nets import FEATURE_SPEC, LEVELS, NOOP_LEVEL, input_dim
from marllb.sim import executor as simx
from marllb.sim.finetune import add_arguments as finetune_arguments
from marllb.sim.marl_env import MarlEnv, feature_stats
from marllb.sim.resume import ResumeError, load_state, read_progress, save_state
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


# algorithm -> (module, class); a new learner registers with one line here.  The
# class takes (obs_dim, state_dim, n_agents, n_levels, seed=) and offers actor(),
# update(), policy_params(), load_policy_params() and a ``cfg`` with ``hidden``
# and ``buffer_episodes`` (see qmix.py).
LEARNERS: dict[str, tuple[str, str]] = {
    "qmix": ("marllb.sim.qmix", "QMIX"),
    "sac_gru": ("marllb.sim.sac_gru", "SacGru"),
}
EX_IOERR = 74
STATE_EVERY_MIN = 5.0


def make_learner(algo: str, env: MarlEnv, seed: int) -> Any:
    import torch

    torch.set_num_threads(1)
    if algo not in LEARNERS:
        raise ValueError(f"unknown algorithm {algo!r} ({', '.join(LEARNERS)})")
    mod, cls = LEARNERS[algo]
    learner_cls = getattr(importlib.import_module(mod), cls)
    return learner_cls(env.obs_dim, env.state_dim, env.n_agents_padded, len(LEVELS), seed=seed)


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


@dataclass
class Budget:
    """What the user gave: exactly ``episodes`` episodes, or ``minutes`` of training."""

    minutes: float
    episodes: int | None = None

    @property
    def total(self) -> float:
        return float(self.episodes) if self.episodes is not None else self.minutes * 60.0

    def used(self, ep_i: int, train_s: float) -> float:
        return float(ep_i) if self.episodes is not None else train_s

    def done(self, ep_i: int, train_s: float) -> bool:
        return self.used(ep_i, train_s) >= self.total

    def frac(self, ep_i: int, train_s: float) -> float:
        return min(1.0, self.used(ep_i, train_s) / self.total)

    def bar(self, quiet: bool, desc: str, start: float) -> Any:
        from tqdm import tqdm

        if self.episodes is not None:
            return tqdm(total=self.episodes, initial=int(start), unit="ep", disable=quiet,
                        file=sys.stderr, desc=desc)
        return tqdm(total=round(self.total), initial=int(start), unit="s", disable=quiet,
                    file=sys.stderr, desc=desc,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of training "
                               "[{elapsed}<{remaining}{postfix}]")


LOG_COLUMNS = ["episode", "wall_s", "scenario", "epsilon", "return", "jct_mean_ms",
               "jct_p99_ms", "loss", "global_step"]


@dataclass
class Run:
    """A run's progress: what ``state/progress.json`` holds and the outputs show."""

    settings: dict[str, Any]
    ep_i: int = 0
    train_s: float = 0.0
    global_step: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_score: float | None = None
    best_episode: int | None = None
    rows: list[list[str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    rng_state: dict[str, Any] | None = None

    def progress(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"settings": self.settings, "ep_i": self.ep_i, "train_s": self.train_s,
                "global_step": self.global_step, "evals": self.evals,
                "best_score": self.best_score, "best_episode": self.best_episode,
                "rows": self.rows, "commands": self.commands,
                "rng_state": rng.bit_generator.state}

    @classmethod
    def from_progress(cls, p: dict[str, Any]) -> Run:
        return cls(settings=p["settings"], ep_i=int(p["ep_i"]), train_s=float(p["train_s"]),
                   global_step=int(p.get("global_step", 0)), evals=list(p["evals"]),
                   best_score=p.get("best_score"), best_episode=p.get("best_episode"),
                   rows=[list(r) for r in p.get("rows", [])],
                   commands=list(p.get("commands", [])), rng_state=p.get("rng_state"))


def _adopt_saved_best(run: Run, out: Path) -> None:
    """A best checkpoint saved after the state (then killed) stays the one to beat."""
    try:
        _, meta = ckpt.load(out / "best")
        tr = meta.get("trained") or {}
        score, ep = float(tr["score"]), int(tr["episodes"])
    except (ckpt.CheckpointError, KeyError, TypeError, ValueError):
        return
    if ep > 0 and (run.best_score is None or score > run.best_score):
        run.best_score, run.best_episode = score, ep


def _tb_writer(out: Path) -> Any:
    """A TensorBoard SummaryWriter when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - optional: not installed is fine
        return None
    try:
        return SummaryWriter(str(out / "tb"))
    except Exception:  # noqa: BLE001
        return None


def _write_log(out: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(LOG_COLUMNS)
    w.writerows(rows)
    atomic_write_text(out / "log.csv", buf.getvalue())


def _command_line(argv: list[str] | None) -> str:
    return "lbsim " + shlex.join(argv) if argv else "lbsim train (called from Python)"


def _meta(run: Run, learner: Any, mean: np.ndarray, std: np.ndarray, m_max: int,
          prior: dict[str, Any]) -> dict[str, Any]:
    st = run.settings
    return {
        "algorithm": st["algo"],
        "features": {"names": list(FEATURE_NAMES), "spec": FEATURE_SPEC,
                     "mean": mean.tolist(), "std": std.tolist(), "decay_per_s": 0.9},
        "levels": list(LEVELS),
        "hidden": learner.cfg.hidden,
        "input_dim": input_dim(len(LEVELS)),
        "n_servers": m_max,
        "servers_min": 1,
        "servers_max": int(lib.MLB_MAX_SERVERS),
        "mode": "sed",
        "scenario": st["scenario"],
        "seed": st["seed"],
        "command": run.commands[-1] if run.commands else None,
        "commands": run.commands,
        "previous": ({"command": prior.get("command"), "trained": prior.get("trained")}
                     if st.get("init") else None),
    }


def train(algo: str | None, scenario: str | None, *, minutes: float, seed: int, out: Path,
          eval_every_s: float = 60.0, eval_seeds: int = 2, duration: float | None = None,
          updates_per_episode: int = 4, quiet: bool = False,
          episodes: int | None = None, init: str | None = None,
          eps_start: float = 1.0, resume: bool = False, state_every_min: float = STATE_EVERY_MIN,
          argv: list[str] | None = None, executor: simx.Executor | None = None
          ) -> dict[str, Any]:
    """Train for ``minutes`` of training time (or exactly ``episodes`` episodes, which
    makes a seeded run repeatable); returns the summary written to eval.json.

    ``resume``: continue the run saved in ``out/state`` (its settings; a given
    ``minutes``/``episodes`` replaces the total budget).  KeyboardInterrupt is
    re-raised after the folder has been made consistent (``summary["interrupted"]``
    is not returned then; see cmd_train).  ``executor``: rollout workers
    (``marllb.sim.executor.RolloutSource``; the same episodes on any executor)."""
    from marllb.sim.marl_env import Episode
    from marllb.sim.qmix import Replay

    out.mkdir(parents=True, exist_ok=True)
    prog = read_progress(out) if resume else None
    if prog is not None:
        run = Run.from_progress(prog)
        _adopt_saved_best(run, out)
        st = run.settings
        if episodes is not None or minutes != st["minutes"]:
            st["episodes"], st["minutes"] = episodes, minutes
    else:
        st = {"algo": algo, "scenario": scenario, "minutes": minutes, "episodes": episodes,
              "seed": seed, "eval_every_s": eval_every_s, "eval_seeds": eval_seeds,
              "duration": duration, "updates_per_episode": updates_per_episode,
              "init": init, "eps_start": eps_start}
        run = Run(settings=st)
    run.commands.append(_command_line(argv))
    scs = _scenarios(st["scenario"], st["duration"])
    rng = np.random.default_rng(st["seed"])
    if run.rng_state is not None:
        rng.bit_generator.state = run.rng_state
    init_t: dict[str, np.ndarray] | None = None
    prior: dict[str, Any] = {}
    if prog is not None:
        mean, std = np.asarray(prog["mean"]), np.asarray(prog["std"])
    elif st["init"]:
        # continue from a checkpoint: its agent, and its normalisation (the
        # inputs must mean what they meant when it was trained)
        init_t, prior = ckpt.load(st["init"])
        ckpt.validate(init_t, prior, st["init"], algorithm=st["algo"])
        mean = np.asarray(prior["features"]["mean"])
        std = np.asarray(prior["features"]["std"])
    else:
        stats = [feature_stats(sc, [TRAIN_SEED0 - 1]) for sc in scs]
        mean = np.mean([m for m, _ in stats], axis=0)
        std = np.sqrt(np.mean([s * s for _, s in stats], axis=0))
    l_max = max(sc.edge.n_lbs for sc in scs)
    m_max = max(sc.n_servers for sc in scs)
    envs = [MarlEnv(sc, mean, std, l_max=l_max, m_max=m_max) for sc in scs]
    learner = make_learner(st["algo"], envs[0], st["seed"])
    source = simx.RolloutSource(envs, st["algo"], TRAIN_SEED0, st["seed"], executor)
    buf = Replay(learner.cfg.buffer_episodes)
    if prog is not None:
        load_state(prog, learner, buf, Episode)
    elif init_t is not None:
        learner.load_policy_params(init_t)
    ev_seeds = [EVAL_SEED0 + i for i in range(st["eval_seeds"])]
    _, base, base_ret = evaluate_greedy(None, envs, ev_seeds)
    if not run.evals:
        # the untrained network: a reference point, never a "best" candidate
        score0, res0, ret0 = evaluate_greedy(learner, envs, ev_seeds, base)
        run.evals.append({"episode": 0, "wall_s": 0.0, "score": score0, "return": ret0,
                          "sed": base, "policy": res0, "untrained": True})
    meta = _meta(run, learner, mean, std, m_max, prior)
    loop = _Loop(run, learner, source, buf, envs, scs, ev_seeds, base, rng, out, meta,
                 Budget(st["minutes"], st["episodes"]), quiet, state_every_min,
                 {"mean": mean.tolist(), "std": std.tolist()})
    try:
        loop.run()
    except KeyboardInterrupt:
        loop.finish(base_ret, interrupted=True)
        raise
    return loop.finish(base_ret, interrupted=False)


class _Loop:
    """The episode loop with its outputs; ``finish`` leaves the folder consistent."""

    def __init__(self, run: Run, learner: Any, source: simx.RolloutSource, buf: Any,
                 envs: list[MarlEnv],
                 scs: list[Scenario], ev_seeds: list[int], base: Any,
                 rng: np.random.Generator, out: Path, meta: dict[str, Any], budget: Budget,
                 quiet: bool, state_every_min: float, norm: dict[str, Any]) -> None:
        self.run_ = run
        self.learner, self.buf, self.envs, self.scs = learner, buf, envs, scs
        self.source = source
        self.ev_seeds, self.base, self.rng, self.out = ev_seeds, base, rng, out
        self.meta, self.budget, self.quiet = meta, budget, quiet
        self.state_every_s = state_every_min * 60.0
        self.norm = norm
        self.tb = _tb_writer(out)
        self.loss = float("nan")
        self.t_start = time.monotonic() - run.train_s

    def train_s(self) -> float:
        return time.monotonic() - self.t_start

    def run(self) -> None:
        run, st = self.run_, self.run_.settings
        next_eval = time.monotonic() + st["eval_every_s"]
        next_state = time.monotonic() + self.state_every_s
        bar = self.budget.bar(self.quiet, f"train {st['algo']}",
                              self.budget.used(run.ep_i, run.train_s))
        try:
            while not self.budget.done(run.ep_i, self.train_s()):
                eps = max(0.05, st["eps_start"] - (st["eps_start"] - 0.05)
                          * self.budget.frac(run.ep_i, self.train_s()) / 0.4)
                self._episode(eps)
                last = self.budget.done(run.ep_i, self.train_s())
                if time.monotonic() >= next_eval or last:
                    self._evaluate(bar, eps)
                    next_eval = time.monotonic() + st["eval_every_s"]
                if time.monotonic() >= next_state and not last:
                    self._save_state()
                    next_state = time.monotonic() + self.state_every_s
                bar.n = round(min(self.budget.used(run.ep_i, self.train_s()), self.budget.total))
                bar.refresh()
        finally:
            bar.close()

    def _episode(self, eps: float) -> None:
        run = self.run_
        k = run.ep_i % len(self.envs)
        ep = self.source.episode(run.ep_i, self.learner, eps, self.rng,
                                 limit=self.budget.episodes)
        eps = self.source.eps_used
        self.buf.add(ep)
        run.ep_i += 1
        run.global_step += len(ep.reward)
        if len(self.buf) >= 2:
            losses = [self.learner.update(self.buf, self.rng)
                      for _ in range(run.settings["updates_per_episode"])]
            self.loss = float(np.mean(losses))
        run.train_s = self.train_s()
        run.rows.append([str(run.ep_i), f"{run.train_s:.2f}", self.scs[k].name, f"{eps:.3f}",
                         f"{ep.ret:.3f}", f"{ep.jct_mean_ms:.2f}", f"{ep.jct_p99_ms:.2f}",
                         f"{self.loss:.5f}", str(run.global_step)])
        _write_log(self.out, run.rows)
        if self.tb is not None:
            self.tb.add_scalar("charts/episodic_return", ep.ret, run.global_step)
            self.tb.add_scalar("charts/epsilon", eps, run.global_step)
            self.tb.add_scalar("charts/jct_mean_ms", ep.jct_mean_ms, run.global_step)
            if np.isfinite(self.loss):
                self.tb.add_scalar("losses/loss", self.loss, run.global_step)

    def _evaluate(self, bar: Any, eps: float) -> None:
        run = self.run_
        score, res, ret = evaluate_greedy(self.learner, self.envs, self.ev_seeds, self.base)
        run.evals.append({"episode": run.ep_i, "wall_s": round(self.train_s(), 2),
                          "score": score, "return": ret, "policy": res})
        if self.tb is not None:
            self.tb.add_scalar("eval/score", score, run.global_step)
        if run.best_score is None or score > run.best_score:
            run.best_score, run.best_episode = score, run.ep_i
            ckpt.save(self.out / "best", self.learner.policy_params(), {
                **self.meta, "trained": {"episodes": run.ep_i, "score": score,
                                         "seconds": round(self.train_s(), 1)}})
        bar.set_postfix(score=f"{score:.3f}", best=f"{run.best_score:.3f}", eps=f"{eps:.2f}")

    def _save_state(self) -> None:
        self.run_.train_s = self.train_s()
        save_state(self.out, self.learner, self.buf,
                   {**self.run_.progress(self.rng), **self.norm})

    def finish(self, base_ret: float, interrupted: bool) -> dict[str, Any]:
        """Last checkpoint, state, eval.json, plot: all atomic, in this order."""
        run = self.run_
        run.train_s = self.train_s()
        ckpt.save(self.out / "last", self.learner.policy_params(),
                  {**self.meta, "trained": {"episodes": run.ep_i,
                                            "seconds": round(run.train_s, 1)}})
        self._save_state()
        untrained = run.evals[0] if run.evals and run.evals[0].get("untrained") else None
        summary = {"algorithm": run.settings["algo"], "scenario": run.settings["scenario"],
                   "episodes": run.ep_i, "seconds": round(run.train_s, 1),
                   "best_score": run.best_score, "best_episode": run.best_episode,
                   "untrained_score": untrained["score"] if untrained else None,
                   "sed_return": base_ret, "interrupted": interrupted,
                   "command": run.commands[-1], "evals": run.evals}
        atomic_write_json(self.out / "eval.json", summary, indent=1)
        if self.tb is not None:
            self.tb.close()
        _plot(self.out, run.rows, run.evals)
        return summary


def _smooth(y: list[float], k: int = 10) -> tuple[int, np.ndarray]:
    if len(y) < k:
        return 0, np.asarray(y)
    return k - 1, np.convolve(y, np.ones(k) / k, mode="valid")


def _plot(out: Path, rows: list[list[str]], ev: list[dict[str, Any]]) -> None:
    """CleanRL-style curves: episodic return, loss and epsilon against global steps,
    and the held-back score (higher is better) with the best trained one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = {c: i for i, c in enumerate(LOG_COLUMNS)}
    fig, axs = plt.subplots(2, 2, figsize=(11, 7))
    (a1, a2), (a3, a4) = axs
    if rows:
        x = [int(r[col["global_step"]]) for r in rows]
        for ax, key, label in ((a1, "return", "episodic return (exploring)"),
                               (a2, "loss", "training loss"), (a3, "epsilon", "epsilon")):
            y = [float(r[col[key]]) for r in rows]
            ax.plot(x, y, lw=0.7, alpha=0.6, label=label)
            if key != "epsilon":
                off, sm = _smooth(y)
                if off:
                    ax.plot(x[off:], sm, label="moving mean (10)")
            ax.set_xlabel("global step (ticks)")
            ax.set_title(label, fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    trained = [e for e in ev if not e.get("untrained")]
    a4.plot([e["episode"] for e in trained], [e["score"] for e in trained], "o-",
            label="trained policy")
    for e in ev:
        if e.get("untrained"):
            a4.plot([e["episode"]], [e["score"]], "x", color="grey", label="untrained")
    if trained:
        b = max(trained, key=lambda e: e["score"])
        a4.plot([b["episode"]], [b["score"]], "*", ms=12, color="C3", label="best (kept)")
    a4.axhline(-1.0, color="grey", ls="--", label="SED (static weights)")
    a4.set_xlabel("episode")
    a4.set_title("held-back score (higher is better)", fontsize=9)
    a4.legend(fontsize=8)
    a4.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_file(out / "curve.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _err(msg: str, code: int) -> int:
    print(f"lbsim: error: {msg}", file=sys.stderr)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "from_log", None):   # fine-tune from lbd's trajectory log
        from marllb.sim.finetune import cmd_finetune

        return cmd_finetune(args)
    if args.episodes is not None and args.episodes < 1:
        return _err(f"--episodes must be >= 1, got {args.episodes}", 2)
    minutes = args.minutes if args.minutes is not None else 10.0
    if not minutes > 0 or not args.state_every > 0:
        return _err(f"--minutes and --state-every must be > 0, got {minutes}, "
                    f"{args.state_every}", 2)
    resume = args.resume is not None
    out = Path(args.resume if resume else (args.out or ""))
    if not resume and not (args.algo and args.scenario and args.out):
        return _err("--algo, --scenario and --out are required (or --resume DIR)", 2)
    if not resume and (args.algo == "matd3" or args.net == "setnet"):
        from marllb.sim.residual_train import cmd_train_setnet

        args.minutes = minutes      # the residual set network's own trainer (no --resume)
        return cmd_train_setnet(args)
    if resume and args.minutes is None and args.episodes is None:
        try:   # keep the run's own budget
            saved = read_progress(out)["settings"]
            minutes, args.episodes = saved["minutes"], saved["episodes"]
        except ResumeError as e:
            return _err(str(e), 66)
    try:
        executor = simx.executor_from_args(args)
    except simx.ExecutorError as e:
        return _err(str(e), 2 if "--" in str(e) else 69)
    try:
        s = train(args.algo, args.scenario, minutes=minutes, seed=args.seed, out=out,
                  eval_every_s=args.eval_every, eval_seeds=args.eval_seeds,
                  duration=args.duration, quiet=args.quiet, episodes=args.episodes,
                  init=args.init, eps_start=args.eps_start, resume=resume,
                  state_every_min=args.state_every,
                  argv=getattr(args, "argv", None) or sys.argv[1:], executor=executor)
    except (ScenarioError, ckpt.CheckpointError) as e:
        return _err(str(e), 78)
    except ResumeError as e:
        return _err(str(e), 66)
    except OutputError as e:
        return _err(f"{e.strerror or e} (previous outputs left as they were)", EX_IOERR)
    except KeyboardInterrupt:
        if existing_dir(out / "state") is None:
            print(f"lbsim train: interrupted before training started; nothing written to "
                  f"{out}", file=sys.stderr)
        else:
            print(f"lbsim train: interrupted; {out} is consistent (checkpoints, log.csv, "
                  f"eval.json and state/ are complete files); continue with: "
                  f"lbsim train --resume {shlex.quote(str(out))}", file=sys.stderr)
        return 130
    finally:
        if executor is not None:
            executor.close()
    best = "none yet" if s["best_score"] is None else \
        f"{s['best_score']:.3f} at episode {s['best_episode']}"
    untrained = "" if s["untrained_score"] is None else \
        f", untrained {s['untrained_score']:.3f}"
    print(f"lbsim train: {s['episodes']} episodes in {s['seconds']} s, best held-back score "
          f"{best} (SED = -1.000{untrained}); wrote {out / 'best.safetensors'}",
          file=sys.stderr)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a learned policy (qmix, sac_gru) in the simulator",
                       description=__doc__.split("\n\n")[0] + " Writes DIR/best.safetensors "
                       "+ best.json (the best held-back checkpoint), log.csv, eval.json, "
                       "curve.png.")
    p.add_argument("--algo", choices=sorted({*LEARNERS, "matd3"}),
                   help="algorithm (required unless --resume)")
    p.add_argument("--net", choices=["gru", "setnet"], default="gru",
                   help="gru: the v1 GRU agent on static weights; setnet: the residual set "
                   "network on --base (matd3 always uses setnet; default gru)")
    p.add_argument("--base", default="wrr_latency",
                   help="setnet: the baseline the residual corrects (default wrr_latency)")
    p.add_argument("--scenario",
                   help="shipped name or TOML path; a comma-separated list trains on a mix "
                   "(required unless --resume)")
    p.add_argument("--minutes", type=float, default=None,
                   help="training-time budget in minutes (default 10)")
    p.add_argument("--episodes", type=int, help="stop after exactly this many episodes "
                   "instead of --minutes (repeatable runs)")
    p.add_argument("--seed", type=int, default=0, help="(default 0)")
    p.add_argument("--out", help="output directory (required unless --resume)")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR/state "
                   "(its settings; --minutes/--episodes set a new total budget)")
    p.add_argument("--state-every", type=float, default=STATE_EVERY_MIN, metavar="MIN",
                   help="save the resumable state every MIN minutes (default %(default)g)")
    p.add_argument("--eval-every", type=float, default=60.0,
                   help="seconds between held-back evaluations (default 60)")
    p.add_argument("--eval-seeds", type=int, default=2,
                   help="held-back seeds per scenario (default 2)")
    p.add_argument("--duration", type=float, help="simulated seconds per training episode "
                   "(default: the scenario's)")
    p.add_argument("--init", help="continue from this checkpoint (its agent and feature "
                   "normalisation; critics/mixer start fresh)")
    p.add_argument("--eps-start", type=float, default=1.0,
                   help="QMIX epsilon at the start (default 1.0; decays to 0.05 over 40%%)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    finetune_arguments(p)
    simx.add_executor_args(p)
    p.set_defaults(func=cmd_train)
