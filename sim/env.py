"""A Gymnasium env of one load balancer: ``marllb/LoadBalance-v0``.

For single-agent RL libraries (Stable-Baselines3, CleanRL, RLlib, ...).  The
agent sets the weights of ONE LB (``lb``, default 0) over the scenario's M
servers; every other LB runs a heuristic (``others``).  It is a thin wrapper
over the multi-agent env (``marllb.sim.marl_env.MarlEnv``: same simulator,
same daemon feature code, same msg_in path, same reward), driven through its
public ``reset``/``step``; nothing here simulates.

Observation: ``Box(-10, 10, (M, 2F + 1), float32)``, one row per server: the
daemon's normalised features (``nets.agent_inputs``' first 2F columns: the
log1p-z-scored observation row and the same row relative to the LB's mean over
up servers), then the action the agent took last tick as a log-ratio
``log(level) / log(max_ratio)`` in [-1, 1] (0 = static weights).

Actions (``action_type``):
- ``"discrete"``: ``MultiDiscrete([K] * M)``, a level index per server; weight
  = static weight x ``levels[a]`` (default ``nets.LEVELS`` = 0.25 .. 4).
- ``"continuous"``: ``Box(-1, 1, (M,), float32)``, a log-ratio per server;
  weight = static weight x ``max_ratio ** a``, quantised to a log grid of
  ``2 * grid + 1`` levels (step ``max_ratio ** (1 / grid)``, 9 % by default).

Reward: MarlEnv's, minus the jobs in the system per unit of capacity at the
next tick (the whole cluster: by Little's law its time-average is the mean
JCT times the arrival rate).  An episode is one trace, run until every job
has completed or been rejected (``terminated``); ``info`` then carries
``jct_mean_ms``.

Other LBs (``others``): ``"sed"`` (the static weights under the data plane's
SED selection: the daemon's ``sed`` heuristic), ``"random"`` (a random action
per server per tick, from the env's seeded RNG), or a callable
``f(obs, rng) -> action`` taking that LB's observation in this env's format and
returning an action in this env's action format.

Feature normalisation: the statistics shipped in the v1 qmix checkpoint (qmix_v1)'s
metadata (``feature_stats=(mean, std)`` to use others, e.g. from
``marl_env.feature_stats``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from marllb.daemon.nets import LEVELS, N_FEATURES
from marllb.sim.marl_env import MarlEnv
from marllb.sim.scenario import Scenario, load_scenario

ENV_ID = "marllb/LoadBalance-v0"
OtherFn = Callable[[np.ndarray, np.random.Generator], Any]


def shipped_feature_stats() -> tuple[np.ndarray, np.ndarray]:
    """Feature mean/std from the shipped v1 qmix checkpoint (qmix_v1)."""
    from marllb.daemon import checkpoint as ckpt

    _, meta_path = ckpt.paths(ckpt.shipped("qmix_v1"))
    feats = json.loads(meta_path.read_text())["features"]
    return np.asarray(feats["mean"], np.float64), np.asarray(feats["std"], np.float64)


class LoadBalanceEnv(gym.Env):
    """One LB's weights as a Gymnasium env; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, scenario: str | Scenario = "small", *, lb: int = 0,
                 action_type: str = "discrete", others: str | OtherFn = "sed",
                 levels: tuple[float, ...] = LEVELS, max_ratio: float | None = None,
                 grid: int = 16, duration_s: float | None = None,
                 feature_stats: tuple[np.ndarray, np.ndarray] | None = None,
                 render_mode: str | None = None) -> None:
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        if duration_s is not None:
            sc = sc.model_copy(update={"traffic": sc.traffic.model_copy(
                update={"duration_s": float(duration_s)})})
        if not 0 <= lb < sc.edge.n_lbs:
            raise ValueError(f"lb={lb}: scenario {sc.name} has LBs 0..{sc.edge.n_lbs - 1}")
        if action_type not in ("discrete", "continuous"):
            raise ValueError(f"action_type={action_type!r}: 'discrete' or 'continuous'")
        if not (callable(others) or others in ("sed", "random")):
            raise ValueError(f"others={others!r}: 'sed', 'random' or a callable")
        self.sc = sc
        self.lb = lb
        self.action_type = action_type
        self.others = others
        self.render_mode = render_mode
        if action_type == "discrete":
            self.levels = np.asarray(levels, dtype=np.float64)
            if self.levels.size < 2 or np.any(self.levels <= 0):
                raise ValueError(f"levels={levels!r}: two or more positive multipliers")
        else:
            if grid < 1:
                raise ValueError(f"grid={grid}: must be >= 1")
            r = float(max_ratio or max(LEVELS))
            self.levels = r ** (np.arange(-grid, grid + 1) / grid)
        self.grid = grid
        r = float(max_ratio or max(self.levels.max(), 1.0 / self.levels.min()))
        if not r > 1.0:
            raise ValueError(f"max_ratio={max_ratio}: must be > 1")
        self.max_ratio = r
        self._log_level = np.clip(np.log(self.levels) / math.log(r), -1.0, 1.0)
        self.noop = int(np.argmin(np.abs(np.log(self.levels))))
        mean, std = feature_stats if feature_stats is not None else shipped_feature_stats()
        self.marl = MarlEnv(sc, mean, std, levels=tuple(float(x) for x in self.levels))
        self.agent = f"lb{lb}"
        M = sc.n_servers
        self.observation_space = spaces.Box(-10.0, 10.0, (M, 2 * N_FEATURES + 1), np.float32)
        if action_type == "discrete":
            self.action_space = spaces.MultiDiscrete([len(self.levels)] * M)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (M,), np.float32)
        self._prev = np.full((sc.edge.n_lbs, M), self.noop, dtype=np.int64)
        self._done = True
        self._last_obs: dict[str, np.ndarray] = {}

    # ---- conversions between this env's formats and MarlEnv's level indices
    def _to_index(self, action: Any) -> np.ndarray:
        M = self.sc.n_servers
        if self.action_type == "discrete":
            a = np.asarray(action, dtype=np.int64).reshape(M)
            return np.clip(a, 0, len(self.levels) - 1)
        a = np.nan_to_num(np.asarray(action, dtype=np.float64).reshape(M), nan=0.0)
        return (np.rint(np.clip(a, -1.0, 1.0) * self.grid) + self.grid).astype(np.int64)

    def _obs(self, k: int, inputs: np.ndarray | None) -> np.ndarray:
        M = self.sc.n_servers
        feats = (np.zeros((M, 2 * N_FEATURES)) if inputs is None
                 else np.asarray(inputs)[:, : 2 * N_FEATURES])
        prev = self._log_level[self._prev[k]][:, None]
        return np.concatenate([feats, prev], axis=1).astype(np.float32)

    def _other_action(self, k: int) -> np.ndarray:
        M = self.sc.n_servers
        if self.others == "sed":
            return np.full(M, self.noop, dtype=np.int64)
        if self.others == "random":
            return self._to_index(self._random_action())
        obs = self._obs(k, self._last_obs.get(f"lb{k}"))
        return self._to_index(self.others(obs, self.np_random))  # type: ignore[operator]

    def _random_action(self) -> np.ndarray:
        M = self.sc.n_servers
        if self.action_type == "discrete":
            return self.np_random.integers(0, len(self.levels), M)
        return self.np_random.uniform(-1.0, 1.0, M)

    # ---- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        trace_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31))
        self._prev[:] = self.noop
        obs, _ = self.marl.reset(seed=trace_seed)
        self._last_obs = obs
        self._done = not obs  # an empty trace: nothing to control
        return self._obs(self.lb, obs.get(self.agent)), {"trace_seed": trace_seed}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() after the episode ended; call reset()")
        acts = {}
        for k, name in enumerate(self.marl.possible_agents):
            a = self._to_index(action) if k == self.lb else self._other_action(k)
            self._prev[k] = a
            acts[name] = a
        obs, rew, term, trunc, infos = self.marl.step(acts)
        self._last_obs = obs
        terminated = bool(term.get(self.agent, True))
        self._done = terminated or bool(trunc.get(self.agent, False))
        return (self._obs(self.lb, obs.get(self.agent)), float(rew.get(self.agent, 0.0)),
                terminated, bool(trunc.get(self.agent, False)), dict(infos.get(self.agent, {})))

    def close(self) -> None:
        self.marl.close()


def _register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="marllb.sim.env:LoadBalanceEnv")


_register()

__all__ = ["ENV_ID", "LoadBalanceEnv", "shipped_feature_stats"]
