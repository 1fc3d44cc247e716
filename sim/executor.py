"""Where simulations run: this process, local worker processes, or a Ray cluster.

    lbsim eval  ... --executor local --workers 4        # multiprocessing (default: 1, in-process)
    lbsim eval  ... --executor ray --workers 8          # ray.init() on this machine
    lbsim train ... --executor ray --ray-address auto   # an existing Ray cluster

Nothing here imports ray unless ``--executor ray`` asks for it (the ``dist``
extra).  Every task is a pure function of its arguments (scenario, trace seed,
policy, parameters), so the same seeds give the same numbers whatever runs
them: results come back in task order, never in completion order.

Two kinds of task:
- ``eval_task``: one (policy, seed) run of ``lbsim eval`` -> ``SimResult``.
- ``rollout_task``: one training episode of ``MarlEnv`` with a snapshot of the
  learner's policy parameters -> ``Episode`` (``RolloutSource`` batches them:
  N workers play N episodes with the same parameters, one learner consumes
  them; the policy they act with is at most N - 1 episodes old, which the
  off-policy learners (QMIX, SAC with replay) tolerate).
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

KINDS = ("local", "ray")


class ExecutorError(RuntimeError):
    """The executor cannot start (ray missing, cluster unreachable)."""


class Executor(Protocol):
    workers: int

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any],
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """``workers`` <= 1: in this process.  More: a pool of spawned processes
    (spawn, not fork: the parent may hold torch threads and C state)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))
        self._pool: Any = None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any],
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            out = []
            for i, it in enumerate(items):
                out.append(fn(it))
                if on_result is not None:
                    on_result(i, out[-1])
            return out
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
        out = []
        for i, r in enumerate(self._pool.imap(fn, items)):
            out.append(r)
            if on_result is not None:
                on_result(i, r)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class RayExecutor:
    """Tasks on Ray: a local ``ray.init`` with ``workers`` CPUs when no
    ``address`` is given, else the cluster at ``address`` (``auto``,
    ``ray://host:10001``) with at most ``workers`` tasks in flight."""

    def __init__(self, workers: int = 2, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as e:
            raise ExecutorError("--executor ray needs ray: pip install 'marllb[dist]'") from e
        self.ray = ray
        self.workers = max(1, int(workers))
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=self.workers, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorError(f"ray.init(address={address!r}) failed: {e}") from e
            self._started = True
        self._remote = ray.remote(num_cpus=1)(_call)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any],
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        ray = self.ray
        items = list(items)
        out: list[Any] = [None] * len(items)
        fn_ref = ray.put(fn)
        pending: dict[Any, int] = {}
        nxt = 0
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < self.workers:
                pending[self._remote.remote(fn_ref, items[nxt])] = nxt
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                out[i] = ray.get(ref)
                if on_result is not None:
                    on_result(i, out[i])
        return out

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(kind: str = "local", workers: int = 1,
                  address: str | None = None) -> Executor:
    if kind == "local":
        if address:
            raise ExecutorError("--ray-address needs --executor ray")
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, address)
    raise ExecutorError(f"unknown executor {kind!r} (choose from {', '.join(KINDS)})")


def add_executor_args(p: argparse.ArgumentParser, default_workers: int = 1) -> None:
    p.add_argument("--executor", choices=KINDS, default="local",
                   help="where runs execute: local processes or a Ray cluster "
                   "(needs the dist extra) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=default_workers,
                   help="parallel workers; local with 1 runs in this process "
                   "(default: %(default)s)")
    p.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto, "
                   "ray://head:10001); default: start Ray on this machine")


def executor_from_args(args: argparse.Namespace) -> Executor | None:
    """None for the plain in-process path (local, 1 worker)."""
    if args.workers < 1:
        raise ExecutorError(f"--workers must be >= 1, got {args.workers}")
    if args.executor == "local" and args.workers == 1 and not args.ray_address:
        return None
    return make_executor(args.executor, args.workers, args.ray_address)


# ---- lbsim eval: one (policy, seed) run per task -------------------------------------

def eval_task(task: tuple[Any, Any, str, str | None, int]) -> Any:
    """(scenario, trace or None = the scenario's for this seed, policy,
    checkpoint, seed) -> SimResult."""
    from marllb.sim.cluster import Cluster, scenario_trace

    sc, trace, pol, ckpt, seed = task
    tr = trace if trace is not None else scenario_trace(sc, seed)
    return Cluster(sc, tr, pol, seed=seed, checkpoint=ckpt).run()


def run_evals(tasks: list[tuple[Any, Any, str, str | None, int]], executor: Executor,
              progress: Callable[[int], None] | None = None) -> list[Any]:
    """``eval_task`` over tasks, results in task order; ``progress(flows)`` per run."""

    def done(i: int, res: Any) -> None:
        if progress is not None:
            progress(len(res.arrival))

    return executor.map(eval_task, tasks, on_result=done)


# ---- lbsim train: rollouts on workers, one learner -------------------------------------

_LEARNERS: dict[tuple, Any] = {}


def rollout_task(task: dict[str, Any]) -> Any:
    """One exploring episode with a snapshot of the policy parameters."""
    from marllb.sim.marl_env import MarlEnv
    from marllb.sim.train import make_learner

    env = MarlEnv(task["scenario"], task["mean"], task["std"], l_max=task["l_max"],
                  m_max=task["m_max"])
    key = (task["algo"], env.obs_dim, env.state_dim, env.n_agents_padded)
    learner = _LEARNERS.get(key)
    if learner is None:
        learner = _LEARNERS[key] = make_learner(task["algo"], env, 0)
    learner.load_policy_params(task["params"])
    rng = np.random.default_rng([task["rng_seed"], task["episode"]])
    return env.rollout(learner.actor(task["eps"], rng), task["trace_seed"])


class RolloutSource:
    """Training episodes for ``lbsim train``: episode i runs on env
    ``i % len(envs)`` with trace seed ``seed0 + i``.  Without an executor, in
    this process with the trainer's rng (the serial path).  With one, a batch
    of ``executor.workers`` episodes at a time with the current parameters,
    each with its own rng ([rng_seed, i]): the same episodes on any executor
    with the same worker count."""

    def __init__(self, envs: list[Any], algo: str, seed0: int, rng_seed: int,
                 executor: Executor | None = None) -> None:
        self.envs = envs
        self.algo = algo
        self.seed0 = seed0
        self.rng_seed = rng_seed
        self.executor = executor
        self._ready: dict[int, Any] = {}
        self.eps_used = 0.0          # the exploration the last returned episode played with

    def episode(self, i: int, learner: Any, eps: float, rng: np.random.Generator,
                limit: int | None = None) -> Any:
        k = i % len(self.envs)
        if self.executor is None:
            self.eps_used = eps
            return self.envs[k].rollout(learner.actor(eps, rng), self.seed0 + i)
        if i not in self._ready:
            self._ready.clear()
            n = self.executor.workers if limit is None else max(1, min(self.executor.workers,
                                                                       limit - i))
            params = learner.policy_params()
            tasks = []
            for j in range(i, i + n):
                env = self.envs[j % len(self.envs)]
                tasks.append({"scenario": env.sc, "mean": env.mean, "std": env.std,
                              "l_max": env.l_max, "m_max": env.m_max, "algo": self.algo,
                              "params": params, "eps": eps, "rng_seed": self.rng_seed,
                              "episode": j, "trace_seed": self.seed0 + j})
            for j, ep in zip(range(i, i + n), self.executor.map(rollout_task, tasks),
                             strict=True):
                self._ready[j] = (ep, eps)
        ep, self.eps_used = self._ready.pop(i)
        return ep
