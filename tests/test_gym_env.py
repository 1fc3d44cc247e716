"""The Gymnasium single-LB env (marllb.sim.env): check_env, random rollouts, registration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from marllb.daemon.nets import LEVELS, N_FEATURES
from marllb.sim.env import ENV_ID, LoadBalanceEnv


@pytest.mark.parametrize("action_type", ["discrete", "continuous"])
def test_check_env_passes(action_type: str) -> None:
    env = LoadBalanceEnv("small", action_type=action_type, duration_s=3)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_spaces_sized_for_the_scenario() -> None:
    env = LoadBalanceEnv("small", duration_s=2)   # 3 servers
    assert env.observation_space.shape == (3, 2 * N_FEATURES + 1)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    assert list(env.action_space.nvec) == [len(LEVELS)] * 3
    cont = LoadBalanceEnv("s1", action_type="continuous", duration_s=2)
    assert cont.action_space.shape == (cont.sc.n_servers,)
    assert cont.observation_space.shape[0] == cont.sc.n_servers
    env.close()
    cont.close()


@pytest.mark.parametrize("action_type,others", [("discrete", "random"),
                                                ("continuous", "sed")])
def test_random_actions_for_hundreds_of_steps(action_type: str, others: str) -> None:
    env = LoadBalanceEnv("small", action_type=action_type, others=others, duration_s=60)
    env.action_space.seed(1)
    obs, info = env.reset(seed=3)
    steps, total = 0, 0.0
    try:
        while steps < 300:
            obs, r, term, trunc, info = env.step(env.action_space.sample())
            assert obs in env.observation_space
            assert np.isfinite(r) and r <= 0.0
            total += r
            steps += 1
            if term or trunc:
                obs, info = env.reset()
    finally:
        env.close()
    assert steps == 300
    assert total < 0.0                  # jobs were in the system: the reward saw them


def test_episode_ends_with_jct_and_actions_matter() -> None:
    """A whole episode terminates with the JCT; starving the big server (its weight at
    the lowest level, the others at the highest) costs reward against static weights."""
    def run(action: np.ndarray) -> tuple[float, dict]:
        env = LoadBalanceEnv("small", others="sed", duration_s=8)
        env.reset(seed=0)
        total, info, term = 0.0, {}, False
        while not term:
            _, r, term, trunc, info = env.step(action)
            total += r
            assert not trunc
        env.close()
        return total, info

    noop = LEVELS.index(1.0)
    static_ret, info = run(np.full(3, noop))
    assert info["jct_mean_ms"] > 0
    bad_ret, _ = run(np.array([0, len(LEVELS) - 1, len(LEVELS) - 1]))
    assert bad_ret < static_ret


def test_registered_and_made_by_id() -> None:
    assert ENV_ID in gym.registry
    env = gym.make(ENV_ID, scenario="small", duration_s=2, action_type="continuous")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 2 * N_FEATURES + 1)
    env.close()


def test_same_seed_same_episode_and_bad_arguments() -> None:
    env = LoadBalanceEnv("small", others="random", duration_s=3)
    seqs = []
    for _ in range(2):
        obs, _ = env.reset(seed=5)
        env.action_space.seed(2)
        rs = [env.step(env.action_space.sample())[1] for _ in range(5)]
        seqs.append((obs, rs))
    env.close()
    np.testing.assert_array_equal(seqs[0][0], seqs[1][0])
    assert seqs[0][1] == seqs[1][1]
    with pytest.raises(ValueError, match="lb=5"):
        LoadBalanceEnv("small", lb=5)
    with pytest.raises(ValueError, match="action_type"):
        LoadBalanceEnv("small", action_type="box")
    with pytest.raises(ValueError, match="others"):
        LoadBalanceEnv("small", others="lsq")


def test_callable_others_receive_observations() -> None:
    seen = []

    def other(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append(obs.shape)
        return np.zeros(obs.shape[0], dtype=np.int64)

    env = LoadBalanceEnv("small", others=other, duration_s=2)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.close()
    assert seen == [(3, 2 * N_FEATURES + 1)] * 3
