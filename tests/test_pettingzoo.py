"""The MARL env is a real PettingZoo ParallelEnv (gymnasium spaces, one agent per LB)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("pettingzoo")
from gymnasium import spaces  # noqa: E402
from pettingzoo import ParallelEnv  # noqa: E402
from pettingzoo.test import parallel_api_test  # noqa: E402

from marllb.sim.lb import have_core  # noqa: E402

pytestmark = pytest.mark.skipif(not have_core(), reason="C data-plane core not built")


def test_parallel_api_test_passes_without_warnings() -> None:
    from marllb.sim.marl_env import parallel_env

    env = parallel_env(scenario="small")
    assert isinstance(env, ParallelEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(env, num_cycles=200)
    ours = [w for w in caught if "pettingzoo" in str(w.filename)]
    assert not ours, [str(w.message) for w in ours]


def test_spaces_agents_and_state() -> None:
    from marllb.sim.marl_env import parallel_env

    env = parallel_env(scenario="small", duration=3.0)
    assert env.possible_agents == ["lb0", "lb1"]
    ob, ac = env.observation_space("lb1"), env.action_space("lb1")
    assert isinstance(ob, spaces.Box) and ob.shape == (3, env.obs_dim)
    assert isinstance(ac, spaces.MultiDiscrete) and ac.nvec.tolist() == [5, 5, 5]
    obs, _ = env.reset(seed=1)
    assert all(ob.contains(o) for o in obs.values())
    s = env.state()
    assert s.shape == env.state_space.shape and env.state_space.contains(s)
    # every agent puts server 0 (2 of the 4 cores) at the lowest level, the
    # others at the highest: the data plane sends it far less than its half
    while env.agents:
        obs, rew, term, trunc, info = env.step({a: np.array([0, 4, 4]) for a in env.agents})
    assert all(term.values()) and "jct_mean_ms" in info["lb0"]
    res = env._run.result
    share0 = float(np.mean(res.server[res.server >= 0] == 0))
    assert share0 < 0.2, share0
    env.close()


def test_max_cycles_truncates() -> None:
    from marllb.sim.marl_env import parallel_env

    env = parallel_env(scenario="small", duration=3.0, max_cycles=5)
    env.reset(seed=0)
    for _ in range(5):
        _, rew, term, trunc, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
    assert all(trunc.values()) and not any(term.values()) and env.agents == []
    assert rew["lb0"] <= 0.0


def test_reset_seed_repeats_and_differs() -> None:
    from marllb.sim.marl_env import parallel_env

    env = parallel_env(scenario="small", duration=3.0)

    def episode(seed: int) -> list[float]:
        env.reset(seed=seed)
        out = []
        while env.agents:
            _, rew, _, _, _ = env.step({a: env.action_space(a).sample() for a in env.agents})
            out.append(rew["lb0"])
        return out

    a, b, c = episode(3), episode(3), episode(4)
    assert a == b
    assert a != c
