"""A multi-agent training env over the simulator's fast driver.

One agent per LB (``lb0``, ``lb1``, ...).  Each tick, after the LB's timer
published msg_out, the agent observes ONLY its own LB's frame, computed by the
daemon's code: ``snapshot_view -> FeatureExtractor.update ->
observation_matrix -> nets.agent_inputs`` (normalisation from the checkpoint's
statistics).  Its action is one level index per server; the env writes
``static x LEVELS[a]`` into that LB's msg_in (SED mode) exactly as the daemon
would (sanitised, with the frame's dp_gen/t_ns and the scenario's TTL).

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

Two ways to drive it:
- ``rollout(act_fn, seed)``: the fast path the trainers use; ``act_fn`` is
  called once per tick with every agent's inputs and returns every agent's
  level indices; returns an ``Episode`` of arrays.
- ``reset()/step()``: PettingZoo's parallel-env conventions (dicts keyed by
  agent name; ``terminations``/``truncations``/``infos``), implemented by
  running the cluster in a helper thread that hands over at each tick.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from marllb.daemon._core import ffi, lib
from marllb.daemon.features import FEATURE_NAMES, FeatureExtractor, observation_matrix
from marllb.daemon.nets import LEVELS, NOOP_LEVEL, agent_inputs, compress, input_dim
from marllb.daemon.sanitize import sanitize
from marllb.sim.cluster import Cluster, scenario_trace
from marllb.sim.lb import W_MAX, W_MIN, SimLB
from marllb.sim.scenario import Scenario

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
    """The daemon's per-tick work for one LB, split in observe / act halves."""

    def __init__(self, lb: SimLB, k: int, seed: int, ttl_ns: int) -> None:
        self.lb = lb
        self.k = k
        self.view = ffi.new("mlb_out_view_t *")
        self.rng = ffi.new("mlb_rng_t *")
        lib.mlb_rng_seed(self.rng, seed & 0xFFFFFFFFFFFFFFFF)
        self.retries = ffi.new("uint32_t *")
        self.extractor = FeatureExtractor()
        self.ttl_ns = ttl_ns
        self.gen = (seed * 0x9E3779B97F4A7C15 + 99) & 0xFFFFFFFFFFFFFFFF | 1
        self.seq = 0
        self.features: Any = None

    def observe(self) -> Any:
        rc = lib.mlb_out_snapshot_view(self.lb.region, self.view, self.rng, 64, self.retries)
        self.features = self.extractor.update(self.view) if rc == lib.MLB_OK else None
        return self.features

    def apply(self, weights: np.ndarray) -> None:
        f = self.features
        if f is None or f.n == 0:
            return
        w = sanitize(weights, f, W_MIN, W_MAX)
        self.seq += 1
        m = lib.mlb_in_begin(self.lb.region)
        m.daemon_gen = self.gen
        m.msg_seq = self.seq
        m.dp_gen = f.dp_gen
        m.dp_t_ns = f.t_ns
        m.ttl_ns = self.ttl_ns
        m.wall_ns = 0
        m.policy_id = 0
        m.mode = lib.MLB_MODE_SED
        m.n_servers = f.n
        m.flags = 0
        m.policy_name = b"marl-env"
        ffi.memmove(m.weight, ffi.from_buffer("double[]", np.ascontiguousarray(w)), 8 * f.n)
        lib.mlb_in_commit(self.lb.region, m)


def _collect_rows(sc: Scenario, seed: int, policy: str, rows: list[np.ndarray]) -> None:
    ext: list[FeatureExtractor] = []
    views: list[Any] = []
    rng = ffi.new("mlb_rng_t *")
    lib.mlb_rng_seed(rng, 1234 + seed)
    retries = ffi.new("uint32_t *")

    def hook(t: float, now_ns: int, lbs: list[SimLB]) -> bool:
        while len(ext) < len(lbs):
            ext.append(FeatureExtractor())
            views.append(ffi.new("mlb_out_view_t *"))
        for k, lb in enumerate(lbs):
            lb.timer(now_ns)
            if lib.mlb_out_snapshot_view(lb.region, views[k], rng, 64, retries) == lib.MLB_OK:
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


class MarlEnv:
    """Multi-agent env over one scenario; see the module docstring."""

    metadata = {"name": "marllb_v1", "is_parallelizable": True}

    def __init__(self, sc: Scenario, mean: np.ndarray, std: np.ndarray, *,
                 levels: tuple[float, ...] = LEVELS, l_max: int | None = None,
                 m_max: int | None = None) -> None:
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
        self._thread: threading.Thread | None = None
        self._loads: list[float] = []

    # ---- shapes (PettingZoo's observation_space/action_space, without gymnasium)
    def observation_space(self, agent: str) -> tuple[int, int]:
        return (self.M, self.obs_dim)

    def action_space(self, agent: str) -> tuple[int, int]:
        """(servers, levels): one level index per server."""
        return (self.M, len(self.levels))

    @property
    def n_agents_padded(self) -> int:
        return self.l_max * self.m_max

    def _state(self, act: np.ndarray) -> np.ndarray:
        """act: (L, M) active flows -> padded global state."""
        s = np.zeros((1 + self.l_max, self.m_max), dtype=np.float32)
        s[0, : self.M] = act.sum(axis=0) / self.cores
        s[1: 1 + self.L, : self.M] = act / self.cores
        return np.log1p(s).reshape(-1)

    # ---- the fast path
    def rollout(self, act_fn: ActFn, seed: int, record: bool = True) -> Episode:
        sc = self.sc
        L, M = self.L, self.M
        agents: list[_LBAgent] = []
        prev = [np.full(M, NOOP_LEVEL, dtype=np.int64) for _ in range(L)]
        xs: list[np.ndarray] = []
        acts: list[np.ndarray] = []
        states: list[np.ndarray] = []
        loads: list[float] = []
        self._loads = loads
        A = self.n_agents_padded
        D = self.obs_dim

        def hook(t: float, now_ns: int, lbs: list[SimLB]) -> bool:
            if not agents:
                for k, lb in enumerate(lbs):
                    agents.append(_LBAgent(lb, k, seed * 1000 + k + 77,
                                           int(sc.ttl_ms * 1e6)))
            for lb in lbs:
                lb.timer(now_ns)
            feats = [a.observe() for a in agents]
            inputs = []
            active = np.zeros((L, M))
            for k, f in enumerate(feats):
                if f is None or f.n != M:
                    inputs.append(np.zeros((M, D), dtype=np.float32))
                    continue
                active[k] = f.active
                inputs.append(agent_inputs(observation_matrix(f), f.up, prev[k],
                                           self.mean, self.std, len(self.levels)))
            loads.append(float(active.sum()) / self.capacity)
            chosen = act_fn(inputs)
            for k, a in enumerate(agents):
                ak = np.asarray(chosen[k], dtype=np.int64)
                prev[k] = ak
                if a.features is not None and a.features.n == M:
                    a.apply(a.features.static_weight * self.levels[ak])
            if record:
                x = np.zeros((self.l_max, self.m_max, D), dtype=np.float32)
                ac = np.full((self.l_max, self.m_max), NOOP_LEVEL, dtype=np.int64)
                for k in range(L):
                    x[k, :M] = inputs[k]
                    ac[k, :M] = prev[k]
                xs.append(x.reshape(A, D))
                acts.append(ac.reshape(A))
                states.append(self._state(active))
            return True

        res = Cluster(sc, scenario_trace(sc, seed), "sed", seed=seed).run(on_tick=hook)
        r = -np.asarray(loads[1:] + [0.0], dtype=np.float32)  # reward: load at next tick
        amask = np.zeros((self.l_max, self.m_max), dtype=np.float32)
        amask[:L, :M] = 1.0
        summ = res.summary()
        T = len(xs)
        return Episode(
            x=np.stack(xs) if T else np.zeros((0, A, D), np.float32),
            actions=np.stack(acts) if T else np.zeros((0, A), np.int64),
            state=np.stack(states) if T else np.zeros((0, self.state_dim), np.float32),
            reward=r[:T] if T else np.zeros(0, np.float32),
            amask=amask.reshape(A), ret=float(r.sum()),
            jct_mean_ms=summ["jct_mean_ms"], jct_p99_ms=summ["jct_p99_ms"])

    # ---- PettingZoo parallel-env API
    def reset(self, seed: int | None = None, options: dict | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        self.close()
        self._obs_q: queue.Queue = queue.Queue(maxsize=1)
        self._act_q: queue.Queue = queue.Queue(maxsize=1)
        self._stop = False
        self._last_state = np.zeros(self.state_dim, dtype=np.float32)

        def act_fn(inputs: list[np.ndarray]) -> list[np.ndarray]:
            self._obs_q.put(("obs", inputs))
            acts = self._act_q.get()
            if acts is None:
                raise _Stop
            return acts

        def body() -> None:
            try:
                ep = self.rollout(act_fn, int(seed or 0), record=False)
                self._obs_q.put(("done", ep))
            except _Stop:
                pass

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()
        self.agents = list(self.possible_agents)
        kind, payload = self._obs_q.get()
        self._pending = payload
        if kind == "done":  # an empty trace
            self.agents = []
            return {}, {}
        return ({a: payload[k] for k, a in enumerate(self.possible_agents)},
                {a: {} for a in self.possible_agents})

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("step() after the episode ended; call reset()")
        acts = [np.asarray(actions[a], dtype=np.int64) for a in self.possible_agents]
        self._act_q.put(acts)
        kind, payload = self._obs_q.get()
        names = self.possible_agents
        if kind == "done":
            self.agents = []
            self._thread = None
            rew = {a: 0.0 for a in names}
            return ({a: np.zeros(self.observation_space(a), np.float32) for a in names}, rew,
                    {a: True for a in names}, {a: False for a in names},
                    {a: {"jct_mean_ms": payload.jct_mean_ms} for a in names})
        # reward of the previous step = minus the load now observed
        obs = {a: payload[k] for k, a in enumerate(names)}
        r = -self._loads[-1] if self._loads else 0.0
        return (obs, {a: r for a in names}, {a: False for a in names},
                {a: False for a in names}, {a: {} for a in names})

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            try:
                self._act_q.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=5)
        self._thread = None


class _Stop(Exception):
    pass


__all__ = ["Episode", "FEATURE_NAMES", "MarlEnv", "feature_stats"]
