"""Discrete SAC with a GRU actor for the marllb env, CleanRL-style, one file.

- Actor: the same shared-parameter GRU agent as QMIX (``qmix.Agent``; the
  daemon serves it with ``marllb.daemon.nets.NumpyAgent``), its head giving
  logits over the weight levels of one server.  Training samples from the
  softmax; serving takes the most probable level.
- Critics: twin Q-networks, centralised (the agent's input row plus the
  global state, training only), feed-forward; target critics by Polyak
  averaging.  Targets: n-step team reward plus the soft value
  sum_a pi(a|o') (min Q_targ(o', s', a) - alpha log pi(a|o')) past the window.
- Entropy temperature alpha tuned automatically towards a target entropy of
  ``target_entropy_frac * log(levels)``.
- Replay and burn-in windows as in QMIX (``qmix.Replay``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from marllb.daemon.nets import NumpyAgent
from marllb.sim.qmix import Agent, Replay, nstep_targets

__all__ = ["Replay", "SacConfig", "SacGru"]


def actor_temperature_targets(agent: Any, p: torch.Tensor, logp: torch.Tensor,
                              qmin: torch.Tensor, m: torch.Tensor, denom: torch.Tensor,
                              alpha: torch.Tensor) -> None:
    """The discrete-SAC steps after the critics, shared by both learners: the actor
    towards the soft-min Q, the temperature towards the target entropy, then the
    critics' Polyak-averaged targets (``agent`` has cfg, the nets and optimisers)."""
    c = agent.cfg
    la = ((p * (alpha * logp - qmin)).sum(-1) * m).sum() / denom
    agent.opt_actor.zero_grad()
    la.backward()
    nn.utils.clip_grad_norm_(agent.actor_net.parameters(), c.grad_clip)
    agent.opt_actor.step()
    ent = -((p * logp).sum(-1) * m).sum().detach() / denom
    lalpha = agent.log_alpha * (ent - agent.target_entropy)
    agent.opt_alpha.zero_grad()
    lalpha.backward()
    agent.opt_alpha.step()
    with torch.no_grad():
        for net, tgt in ((agent.q1, agent.q1_t), (agent.q2, agent.q2_t)):
            for w, t in zip(net.parameters(), tgt.parameters(), strict=True):
                t.mul_(1 - c.tau).add_(c.tau * w)
    agent.updates += 1


@dataclass
class SacConfig:
    hidden: int = 64
    critic_hidden: int = 128
    lr_actor: float = 3e-4
    lr_critic: float = 5e-4
    lr_alpha: float = 3e-4
    gamma: float = 0.95
    n_step: int = 5
    burn_in: int = 8
    window: int = 32
    batch: int = 32
    tau: float = 0.01
    target_entropy_frac: float = 0.3
    buffer_episodes: int = 300
    grad_clip: float = 10.0


class Critic(nn.Module):
    """Q(o_i, s, .) for one agent: MLP over its input row and the global state."""

    def __init__(self, obs_dim: int, state_dim: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + state_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x: (..., A, D), s: (..., S) -> (..., A, K)."""
        s = s.unsqueeze(-2).expand(*x.shape[:-1], s.shape[-1])
        return self.net(torch.cat([x, s], dim=-1))


class SacGru:
    def __init__(self, obs_dim: int, state_dim: int, n_agents: int, n_levels: int,
                 cfg: SacConfig | None = None, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg = cfg or SacConfig()
        c = self.cfg
        self.n_levels = n_levels
        self.actor_net = Agent(obs_dim, c.hidden, n_levels)
        self.q1 = Critic(obs_dim, state_dim, c.critic_hidden, n_levels)
        self.q2 = Critic(obs_dim, state_dim, c.critic_hidden, n_levels)
        self.q1_t = Critic(obs_dim, state_dim, c.critic_hidden, n_levels)
        self.q2_t = Critic(obs_dim, state_dim, c.critic_hidden, n_levels)
        self.q1_t.load_state_dict(self.q1.state_dict())
        self.q2_t.load_state_dict(self.q2.state_dict())
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.target_entropy = c.target_entropy_frac * math.log(n_levels)
        self.opt_actor = torch.optim.Adam(self.actor_net.parameters(), lr=c.lr_actor)
        self.critic_params = list(self.q1.parameters()) + list(self.q2.parameters())
        self.opt_critic = torch.optim.Adam(self.critic_params, lr=c.lr_critic)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=c.lr_alpha)
        self.updates = 0

    def actor(self, eps: float, rng: np.random.Generator, greedy: bool = False):  # noqa: ANN201
        """An act_fn for MarlEnv.rollout: sample from pi (greedy: most probable).
        ``eps`` is unused (exploration comes from the policy's entropy)."""
        net = NumpyAgent(self.actor_net.numpy_params())
        hs: list[np.ndarray] = []

        def act(inputs: list[np.ndarray]) -> list[np.ndarray]:
            if not hs:
                hs.extend(net.init_hidden(x.shape[0]) for x in inputs)
            out = []
            for k, x in enumerate(inputs):
                logits, hs[k] = net.step(x, hs[k])
                if greedy:
                    out.append(np.argmax(logits, axis=1))
                    continue
                z = logits - logits.max(axis=1, keepdims=True)
                p = np.exp(z)
                p /= p.sum(axis=1, keepdims=True)
                u = rng.random((p.shape[0], 1))
                out.append(np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1),
                                      self.n_levels - 1))
            return out

        return act

    def update(self, buf: Replay, rng: np.random.Generator) -> float:
        c = self.cfg
        b, x, h0 = buf.sample_windows(c, rng)
        W, B, A, _ = b["x"].shape
        with torch.no_grad():
            _, hb = self.actor_net(x[: c.burn_in], h0)
        logits, _ = self.actor_net(x[c.burn_in:], hb)
        logits = logits.reshape(W - c.burn_in, B, A, -1)
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        xs = b["x"][c.burn_in:]
        st = b["state"][c.burn_in:]
        amask = b["amask"]
        alpha = self.log_alpha.exp().detach()

        # ---- critics
        with torch.no_grad():
            qt = torch.min(self.q1_t(xs, st), self.q2_t(xs, st))
            v = (p * (qt - alpha * logp)).sum(-1)                     # (W', B, A)
            y = nstep_targets(b["rew"][c.burn_in:].unsqueeze(-1),
                              b["valid"][c.burn_in:].unsqueeze(-1), v,
                              c.gamma, c.n_step, 0, c.window)       # (window, B, A)
        act = b["act"][c.burn_in: c.burn_in + c.window].unsqueeze(-1)
        xw, sw = xs[: c.window], st[: c.window]
        m = b["valid"][c.burn_in: c.burn_in + c.window].unsqueeze(-1) * amask
        denom = m.sum().clamp(min=1.0)
        q1 = self.q1(xw, sw).gather(-1, act).squeeze(-1)
        q2 = self.q2(xw, sw).gather(-1, act).squeeze(-1)
        lc = (((q1 - y) ** 2 + (q2 - y) ** 2) * m).sum() / denom
        self.opt_critic.zero_grad()
        lc.backward()
        nn.utils.clip_grad_norm_(self.critic_params, c.grad_clip)
        self.opt_critic.step()

        # ---- actor
        with torch.no_grad():
            qmin = torch.min(self.q1(xw, sw), self.q2(xw, sw))
        actor_temperature_targets(self, p[: c.window], logp[: c.window], qmin, m, denom, alpha)
        return float(lc.item())

    def load_policy_params(self, tensors: dict[str, np.ndarray]) -> None:
        """Start from a checkpoint's actor."""
        self.actor_net.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()})

    def policy_params(self) -> dict[str, np.ndarray]:
        return self.actor_net.numpy_params()


# ---------------------------------------------------------------------------
# Discrete SAC on the residual set network (v2): the actor is the shared
# SetNet (logits over ``setnet.LOG_LEVELS`` on top of the adaptive baseline;
# its no-op level wins ties, so the untrained greedy actor is the baseline);
# twin per-server critics are set networks over the actor's input plus the
# training-only global state, trained on the team reward.

@dataclass
class SetSacConfig:
    hidden: int = 64
    critic_hidden: int = 128
    lr_actor: float = 3e-4
    lr_critic: float = 5e-4
    lr_alpha: float = 3e-4
    gamma: float = 0.9
    tau: float = 0.01
    batch: int = 128
    target_entropy_frac: float = 0.3
    grad_clip: float = 10.0
    buffer_ticks: int = 200_000


class SetSac:
    kind = "discrete"

    def __init__(self, cfg: SetSacConfig | None = None, seed: int = 0) -> None:
        import copy

        from marllb.daemon import setnet
        from marllb.sim.residual_env import G_DIM
        from marllb.sim.setnet import SetNet

        torch.manual_seed(seed)
        self.cfg = c = cfg or SetSacConfig()
        self.K = K = len(setnet.LOG_LEVELS)
        self.actor_net = SetNet(setnet.N_INPUTS, c.hidden, K, noop_bias=1e-3)
        cin = setnet.N_INPUTS + G_DIM
        self.q1, self.q2 = SetNet(cin, c.critic_hidden, K), SetNet(cin, c.critic_hidden, K)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.full((1,), math.log(0.05), requires_grad=True)
        self.target_entropy = c.target_entropy_frac * math.log(K)
        self.opt_actor = torch.optim.Adam(self.actor_net.parameters(), lr=c.lr_actor)
        self.critic_params = list(self.q1.parameters()) + list(self.q2.parameters())
        self.opt_critic = torch.optim.Adam(self.critic_params, lr=c.lr_critic)
        self.opt_alpha = torch.optim.Adam([self.log_alpha], lr=c.lr_alpha)
        self.updates = 0

    def actor(self, eps: float, rng: np.random.Generator, greedy: bool = False):  # noqa: ANN201
        """An Actor for ``residual_env.rollout``: sample pi (greedy: most probable)."""
        from marllb.daemon import setnet

        net = setnet.NumpySetNet(self.actor_net.numpy_params())
        levels = np.asarray(setnet.LOG_LEVELS)

        def act(x: np.ndarray, up: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            logits = net.forward(x, up).astype(np.float64)
            if greedy:
                u = setnet.log_multiplier(logits, "discrete")
                a = np.searchsorted(levels, u - 1e-9)
                return levels[a], a
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = z / z.sum(axis=1, keepdims=True)
            a = np.minimum((np.cumsum(p, axis=1) < rng.random((p.shape[0], 1))).sum(1),
                           self.K - 1)
            return levels[a], a

        return act

    def update(self, buf: Any, rng: np.random.Generator) -> float:
        c = self.cfg
        b = {k: torch.from_numpy(v) for k, v in buf.sample(c.batch, rng).items()}
        m, m2 = b["m"], b["m2"]
        xg, xg2 = torch.cat([b["x"], b["g"]], -1), torch.cat([b["x2"], b["g2"]], -1)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            lp2 = torch.log_softmax(self.actor_net(b["x2"], m2), -1)
            qt = torch.min(self.q1_t(xg2, m2), self.q2_t(xg2, m2))
            v2 = (lp2.exp() * (qt - alpha * lp2)).sum(-1)                 # (B, N)
            y = b["r"].unsqueeze(-1) + c.gamma * (1 - b["done"]).unsqueeze(-1) * v2
        a = b["a"].unsqueeze(-1)
        denom = m.sum().clamp(min=1.0)
        q1 = self.q1(xg, m).gather(-1, a).squeeze(-1)
        q2 = self.q2(xg, m).gather(-1, a).squeeze(-1)
        lc = ((((q1 - y) ** 2) + ((q2 - y) ** 2)) * m).sum() / denom
        self.opt_critic.zero_grad()
        lc.backward()
        nn.utils.clip_grad_norm_(self.critic_params, c.grad_clip)
        self.opt_critic.step()
        lp = torch.log_softmax(self.actor_net(b["x"], m), -1)
        p = lp.exp()
        with torch.no_grad():
            qmin = torch.min(self.q1(xg, m), self.q2(xg, m))
        actor_temperature_targets(self, p, lp, qmin, m, denom, alpha)
        return float(lc.item())

    def policy_params(self) -> dict[str, np.ndarray]:
        return self.actor_net.numpy_params()

    def load_policy_params(self, tensors: dict[str, np.ndarray]) -> None:
        self.actor_net.load_numpy(tensors)
