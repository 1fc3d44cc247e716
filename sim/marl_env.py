"""A multi-agent training env over the simulator: a real PettingZoo ``ParallelEnv``.

One agent per LB (``lb0``, ``lb1``, ...).  Each tick, after the LB's timer
published msg_out, the agent observes ONLY its own LB's frame, computed by the
daemon's code: ``Region.snapshot_view -> FeatureExtractor.update ->
observation_matrix -> nets.agent_inputs`` (normalisation from the checkpoint's
statistics).  Its action is one level index per server; the env writes
``level_weights(static, LEVELS, a)`` into that LB's msg_in (SED mode) through
the daemon's own ``sanitize`` and ``Publisher`` (the frame's dp_gen/t_ns, the
scenario's TTL), exactly as the daemon would.

Spaces (gymnasium): observation ``Box(-10, 10, (servers, input_dim), float32)``,
action ``MultiDiscrete([len(levels)] * servers)``, global ``state_space``
``Box(0, inf, (state_dim,), float32)`` (``state()``).

Reward (shared by all agents, centralised training): minus the number of jobs
in the system per unit of capacity, measured at the next tick,
``-sum_lb sum_j active[lb, j] / capacity_cores``.  By Little's law the
time-average of jobs in system is arrival rate x mean JCT, so maximising the
return minimises mean JCT; it is dense (every tick) where per-flow JCT arrives
late and only for finished jobs; and a queue piling up on one server (what
makes the p99) costs at every tick it persists.  It needs only counters the
LBs already have, plus the nominal capacity for scaling.

Global state (for the QMIX mixer / SAC critics only, never at serving): per
server total jobs in system / nominal cores, then each LB's active flows per
server / cores, padded to ``l_max`` LBs.

Two ways to drive it, both stepping the cluster's tick generator
(``Cluster.ticks``) directly, in the caller's thread:
- ``rollout(act_fn, seed)``: the fast path our trainers use; ``act_fn`` is
  called once per tick with every agent's inputs and returns every agent's
  level indices; returns an ``Episode`` of arrays.
- ``reset()/step()``: the PettingZoo parallel API (dicts keyed by agent
  name; an episode ends when the trace is exhausted and the cluster drained:
  every agent terminates; ``max_cycles`` steps, if set, truncate it).
  ``parallel_env(scenario=...)`` builds one with the normalisation computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marllb.daemon._core import ffi, lib
from marllb.daemon.features import FEATURE_NAMES, FeatureExtractor, observation_matrix
from marllb.daemon.nets import LEVELS, NOOP_LEVEL, agent_inputs, compress, input_dim
from marllb.daemon.policies.learned import level_weights
from marllb.daemon.sanitize import sanitize
from marllb.daemon.shm import RegionBusy
from marllb.daemon.tick import Publisher
from marllb.sim.cluster import Cluster, Tick, one_blas_thread, scenario_trace
from marllb.sim.lb import W_MAX, W_MIN, SimLB
from marllb.sim.scenario import Scenario, load_scenario

ActFn = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class Episode:
    x: np.ndarray          # (T, A, D) float32 agent inputs (A = l_max * M, padded)
    actions: np.ndarray    # (T, A) int64
    state: np.ndarray      # (T, S) float32
    reward: np.ndarray     # (T,) float32, reward of the step taken at t
    amask: np.ndarray      # (A,) float32, 1 for real agents
    ret: float             # undiscounted return
    jct_mean_ms: float
    jct_p99_ms: float


class _LBAgent:
    """The daemon's per-tick work for one LB, split in observe / act halves
    (the policy is the learner, outside): the daemon's own region reads,
    features, sanitize and msg_in writer."""

    def __init__(self, lb: SimLB, seed: int, ttl_ns: int) -> None:
        self.lb = lb
        self.view = ffi.new("mlb_out_view_t *")
        self.rng = ffi.new("mlb_rng_t *")
        lib.mlb_rng_seed(self.rng, seed & 0xFFFFFFFFFFFFFFFF)
        self.extractor = FeatureExtractor()
        self.ttl_ns = ttl_ns
        self.publisher = Publisher((seed * 0x9E3779B97F4A7C15 + 99) & 0xFFFFFFFFFFFFFFFF | 1)
        self.features: Any = None

    def observe(self) -> Any:
        try:
            self.lb.shm.snapshot_view(self.view, self.rng)
            self.features = self.extractor.update(self.view)
        except (LookupError, RegionBusy):
            self.features = None
        return self.features

    def apply(self, weights: np.ndarray) -> None:
        f = self.features
        if f is None or f.n == 0:
            return
        w = sanitize(weights, f, W_MIN, W_MAX)
        self.publisher.publish(self.lb.shm, f, w, lib.MLB_MODE_SED, "marl-env", self.ttl_ns, 0)


def _collect_rows(sc: Scenario, seed: int, policy: str, rows: list[np.ndarray]) -> None:
    ext: list[FeatureExtractor] = []
    views: list[Any] = []
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_rng_seed(rng, 1234 + seed)

    def hook(t: float, now_ns: int, lbs: list[SimLB]) -> bool:
        while len(ext) < len(lbs):
            ext.append(FeatureExtractor())
            views.append(ffi.new("mlb_out_view_t *"))
        for k, lb in enumerate(lbs):
            lb.timer(now_ns)
            try:
                lb.shm.snapshot_view(views[k], rng)
            except (LookupError, RegionBusy):
                continue
            rows.append(compress(observation_matrix(ext[k].update(views[k]))))
        return True

    # no msg_in is written: the data plane runs the policy's mode on static weights
    Cluster(sc, scenario_trace(sc, seed), policy, seed=seed).run(on_tick=hook)


def feature_stats(sc: Scenario, seeds: list[int], policy: str = "sed"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of the compressed observations under a heuristic (static
    weights, SED): the normalisation stored in the checkpoint."""
    rows: list[np.ndarray] = []
    for s in seeds:
        _collect_rows(sc, s, policy, rows)
    a = np.concatenate(rows, axis=0)
    return a.mean(axis=0), np.maximum(a.std(axis=0), 1e-2)


class _Run:
    """One episode: the cluster's tick generator, stepped in the caller's thread.

    After ``start``/``act`` returned True, ``inputs`` (per agent, (M, D)),
    ``active`` ((L, M) active flows) and ``load`` (jobs / capacity) describe
    the current tick; after False, ``result`` is the ``SimResult``."""

    def __init__(self, env: MarlEnv, seed: int) -> None:
        self.env = env
        self.seed = seed
        sc = env.sc
        self.gen = Cluster(sc, scenario_trace(sc, seed), "sed", seed=seed).ticks()
        self.agents: list[_LBAgent] = []
        self.prev = [np.full(env.M, NOOP_LEVEL, dtype=np.int64) for _ in range(env.L)]
        self.inputs: list[np.ndarray] = []
        self.active = np.zeros((env.L, env.M))
        self.load = 0.0
        self.result: Any = None
        self.steps = 0

    def start(self) -> bool:
        try:
            tick = next(self.gen)
        except StopIteration as e:      # an empty trace
            self.result = e.value
            return False
        self._observe(tick)
        return True

    def act(self, actions: list[np.ndarray]) -> bool:
        """Apply every agent's level indices, run to the next tick."""
        env = self.env
        for k, a in enumerate(self.agents):
            ak = np.asarray(actions[k], dtype=np.int64).reshape(-1)
            self.prev[k] = ak
            f = a.features
            if f is not None and f.n == env.M:
                a.apply(level_weights(f.static_weight, env.levels, ak))
        self.steps += 1
        try:
            tick = self.gen.send(False)
        except StopIteration as e:
            self.result = e.value
            return False
        self._observe(tick)
        return True

    def stop(self) -> None:
        self.gen.close()

    def _observe(self, tick: Tick) -> None:
        env = self.env
        if not self.agents:
            ttl = int(env.sc.ttl_ms * 1e6)
            self.agents = [_LBAgent(lb, self.seed * 1000 + k + 77, ttl)
                           for k, lb in enumerate(tick.lbs)]
        for lb in tick.lbs:
            lb.timer(tick.now_ns)
        M, D = env.M, env.obs_dim
        self.inputs = []
        self.active = np.zeros((env.L, M))
        for k, a in enumerate(self.agents):
            f = a.observe()
            if f is None or f.n != M:
                self.inputs.append(np.zeros((M, D), dtype=np.float32))
                continue
            self.active[k] = f.active
            self.inputs.append(agent_inputs(observation_matrix(f), f.up, self.prev[k],
                                            env.mean, env.std, len(env.levels)))
        self.load = float(self.active.sum()) / env.capacity


class MarlEnv(ParallelEnv):
    """Multi-agent env over one scenario; see the module docstring."""

    metadata = {"name": "marllb_v1", "is_parallelizable": True, "render_modes": []}

    def __init__(self, sc: Scenario, mean: np.ndarray, std: np.ndarray, *,
                 levels: tuple[float, ...] = LEVELS, l_max: int | None = None,
                 m_max: int | None = None, max_cycles: int | None = None) -> None:
        self.sc = sc
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.levels = np.asarray(levels, dtype=np.float64)
        self.L = sc.edge.n_lbs
        self.M = sc.n_servers
        self.l_max = max(l_max or self.L, self.L)
        self.m_max = max(m_max or self.M, self.M)
        self.cores = np.array([g.cores * g.speed for g in sc.expanded_servers()])
        self.capacity = float(self.cores.sum())
        self.possible_agents = [f"lb{k}" for k in range(self.L)]
        self.agents: list[str] = []
        self.obs_dim = input_dim(len(levels))
        self.state_dim = self.m_max * (1 + self.l_max)
        self.max_cycles = max_cycles
        self.observation_spaces = {a: spaces.Box(-10.0, 10.0, (self.M, self.obs_dim), np.float32)
                                   for a in self.possible_agents}
        self.action_spaces = {a: spaces.MultiDiscrete(np.full(self.M, len(self.levels)))
                              for a in self.possible_agents}
        self.state_space = spaces.Box(0.0, np.inf, (self.state_dim,), np.float32)
        self._run: _Run | None = None
        self._next_seed = 0

    # ---- spaces (the same object every call, as PettingZoo requires)
    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.MultiDiscrete:
        """One level index per server."""
        return self.action_spaces[agent]

    @property
    def n_agents_padded(self) -> int:
        return self.l_max * self.m_max

    def _state(self, act: np.ndarray) -> np.ndarray:
        """act: (L, M) active flows -> padded global state."""
        s = np.zeros((1 + self.l_max, self.m_max), dtype=np.float32)
        s[0, : self.M] = act.sum(axis=0) / self.cores
        s[1: 1 + self.L, : self.M] = act / self.cores
        return np.log1p(s).reshape(-1)

    def state(self) -> np.ndarray:
        run = self._run
        return self._state(run.active if run is not None else np.zeros((self.L, self.M)))

    # ---- the fast path
    def rollout(self, act_fn: ActFn, seed: int, record: bool = True) -> Episode:
        with one_blas_thread():
            return self._rollout(act_fn, seed, record)

    def _rollout(self, act_fn: ActFn, seed: int, record: bool) -> Episode:
        A, D = self.n_agents_padded, self.obs_dim
        run = _Run(self, seed)
        xs: list[np.ndarray] = []
        acts: list[np.ndarray] = []
        states: list[np.ndarray] = []
        loads: list[float] = []
        alive = run.start()
        while alive:
            loads.append(run.load)
            chosen = act_fn(run.inputs)
            if record:
                x = np.zeros((self.l_max, self.m_max, D), dtype=np.float32)
                ac = np.full((self.l_max, self.m_max), NOOP_LEVEL, dtype=np.int64)
                for k in range(self.L):
                    x[k, : self.M] = run.inputs[k]
                    ac[k, : self.M] = np.asarray(chosen[k], dtype=np.int64).reshape(-1)
                xs.append(x.reshape(A, D))
                acts.append(ac.reshape(A))
                states.append(self._state(run.active))
            alive = run.act(chosen)
        r = -np.asarray(loads[1:] + [0.0], dtype=np.float32)  # reward: load at next tick
        amask = np.zeros((self.l_max, self.m_max), dtype=np.float32)
        amask[: self.L, : self.M] = 1.0
        summ = run.result.summary()
        T = len(xs)
        return Episode(
            x=np.stack(xs) if T else np.zeros((0, A, D), np.float32),
            actions=np.stack(acts) if T else np.zeros((0, A), np.int64),
            state=np.stack(states) if T else np.zeros((0, self.state_dim), np.float32),
            reward=r[:T] if T else np.zeros(0, np.float32),
            amask=amask.reshape(A), ret=float(r.sum()),
            jct_mean_ms=summ["jct_mean_ms"], jct_p99_ms=summ["jct_p99_ms"])

    # ---- PettingZoo parallel API
    def reset(self, seed: int | None = None, options: dict | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Start an episode on trace seed ``seed`` (None: the previous seed + 1)."""
        self.close()
        if seed is not None:
            self._next_seed = int(seed)
            for k, a in enumerate(self.possible_agents):
                self.action_spaces[a].seed(int(seed) * 1000 + k)
        run = self._run = _Run(self, self._next_seed)
        self._next_seed += 1
        if not run.start():
            self.agents = []
            return {}, {}
        self.agents = list(self.possible_agents)
        return ({a: run.inputs[k] for k, a in enumerate(self.possible_agents)},
                {a: {} for a in self.possible_agents})

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Missing agents' actions are the no-op level (the static weights)."""
        run = self._run
        if run is None or not self.agents:
            raise RuntimeError("step() with no episode running; call reset()")
        names = self.possible_agents
        noop = np.full(self.M, NOOP_LEVEL, dtype=np.int64)
        acts = [np.asarray(actions.get(a, noop), dtype=np.int64) for a in names]
        alive = run.act(acts)
        truncated = alive and self.max_cycles is not None and run.steps >= self.max_cycles
        if alive and not truncated:
            obs = {a: run.inputs[k] for k, a in enumerate(names)}
            r = -run.load
            return (obs, {a: r for a in names}, {a: False for a in names},
                    {a: False for a in names}, {a: {} for a in names})
        info: dict[str, float] = {}
        if not alive:
            s = run.result.summary()
            info = {"jct_mean_ms": s["jct_mean_ms"], "jct_p99_ms": s["jct_p99_ms"]}
            obs = {a: np.zeros((self.M, self.obs_dim), np.float32) for a in names}
            rew = {a: 0.0 for a in names}
        else:
            obs = {a: run.inputs[k] for k, a in enumerate(names)}
            rew = {a: -run.load for a in names}
            run.stop()
        self.agents = []
        return (obs, rew, {a: not alive for a in names}, {a: bool(truncated) for a in names},
                {a: dict(info) for a in names})

    def render(self) -> None:
        return None

    def close(self) -> None:
        if self._run is not None:
            self._run.stop()
        self._run = None
        self.agents = []


def parallel_env(scenario: str | Scenario = "s1", *, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None, stats_seed: int = 99_999,
                 duration: float | None = None, **kw: Any) -> MarlEnv:
    """A PettingZoo ``ParallelEnv`` over a shipped scenario name, a TOML path
    or a ``Scenario``.  Without ``mean``/``std`` the observation normalisation
    is measured under SED on trace seed ``stats_seed`` (as ``lbsim train``
    does); ``duration`` shortens the episodes (simulated seconds of arrivals);
    other keywords go to ``MarlEnv`` (levels, l_max, m_max, max_cycles)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if duration is not None:
        sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(
            update={"duration_s": float(duration)})})
    if mean is None or std is None:
        mean, std = feature_stats(sc, [stats_seed])
    return MarlEnv(sc, mean, std, **kw)


__all__ = ["Episode", "FEATURE_NAMES", "MarlEnv", "feature_stats", "parallel_env"]
