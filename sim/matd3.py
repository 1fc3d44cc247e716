"""MATD3 (multi-agent TD3) for the residual set network, CleanRL-style: one file.

- Agents: one per LB, all sharing ONE deterministic actor, the set network
  (``marllb.sim.setnet.SetNet``, served by ``marllb.daemon.setnet``): per
  server a continuous log-multiplier ``u = U_MAX tanh(out)`` on the adaptive
  baseline's weight.  The output layer starts at zero, so the untrained actor
  IS the baseline.  Decentralised: an LB acts on its own frame only.
- Critics: twin centralised critics (``SetCritic``): per server the actor's
  input, the action taken and training-only global extras (true load per
  unit of true capacity, true capacity share, the other LBs' mean action on
  that server), mean+max pooled to one Q per LB-tick.  CTDE as in MADDPG.
- TD3: clipped double-Q targets, target policy smoothing (clipped Gaussian
  on the target action), delayed actor and target updates, Polyak targets.
- A small L2 pull of ``u`` towards 0 in the actor loss: without evidence
  that a correction pays, the policy stays at the baseline.
- Exploration: time-correlated (AR(1)) Gaussian noise per LB and server.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from marllb.daemon import setnet
from marllb.sim.residual_env import G_DIM, Actor, Replay
from marllb.sim.setnet import SetCritic, SetNet

KIND = "continuous"


@dataclass
class Matd3Config:
    hidden: int = 64
    critic_hidden: int = 128
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    gamma: float = 0.9
    tau: float = 0.01
    batch: int = 128
    policy_delay: int = 2
    target_noise: float = 0.2
    noise_clip: float = 0.5
    u_l2: float = 1.0
    noise_rho: float = 0.8       # AR(1) exploration noise correlation per tick
    grad_clip: float = 10.0
    buffer_ticks: int = 200_000


class MATD3:
    kind = KIND

    def __init__(self, cfg: Matd3Config | None = None, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg = c = cfg or Matd3Config()
        self.actor_net = SetNet(setnet.N_INPUTS, c.hidden, 1)
        self.actor_t = copy.deepcopy(self.actor_net)
        zin = setnet.N_INPUTS + 1 + G_DIM
        self.q1, self.q2 = SetCritic(zin, c.critic_hidden), SetCritic(zin, c.critic_hidden)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.opt_actor = torch.optim.Adam(self.actor_net.parameters(), lr=c.lr_actor)
        self.critic_params = list(self.q1.parameters()) + list(self.q2.parameters())
        self.opt_critic = torch.optim.Adam(self.critic_params, lr=c.lr_critic)
        self.updates = 0

    # ---- acting (numpy, the daemon's network)
    def actor(self, sigma: float, rng: np.random.Generator) -> Actor:
        """An Actor for ``residual_env.rollout``: greedy plus AR(1) noise of scale sigma."""
        net = setnet.NumpySetNet(self.actor_net.numpy_params())
        noise: dict[int, np.ndarray] = {}
        rho = self.cfg.noise_rho

        def act(x: np.ndarray, up: np.ndarray, k: int) -> tuple[np.ndarray, None]:
            u = setnet.log_multiplier(net.forward(x, up), KIND)
            if sigma > 0:
                z = noise.get(k)
                if z is None or z.shape[0] != u.shape[0]:
                    z = rng.normal(0.0, sigma, u.shape[0])
                else:
                    z = rho * z + np.sqrt(1 - rho * rho) * rng.normal(0.0, sigma, u.shape[0])
                noise[k] = z
                u = np.clip(u + z, -setnet.U_MAX, setnet.U_MAX)
            return u, None

        return act

    # ---- learning
    def _u(self, net: SetNet, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return setnet.U_MAX * torch.tanh(net(x, m).squeeze(-1))

    @staticmethod
    def _z(x: torch.Tensor, u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, (u / setnet.U_MAX).unsqueeze(-1), g], dim=-1)

    def update(self, buf: Replay, rng: np.random.Generator) -> float:
        c = self.cfg
        b = {k: torch.from_numpy(v) for k, v in buf.sample(c.batch, rng).items()}
        x, m, g = b["x"], b["m"], b["g"]
        with torch.no_grad():
            u2 = self._u(self.actor_t, b["x2"], b["m2"])
            eps = (torch.randn_like(u2) * c.target_noise).clamp(-c.noise_clip, c.noise_clip)
            u2 = (u2 + eps).clamp(-setnet.U_MAX, setnet.U_MAX)
            z2 = self._z(b["x2"], u2, b["g2"])
            q_next = torch.min(self.q1_t(z2, b["m2"]), self.q2_t(z2, b["m2"]))
            y = b["r"] + c.gamma * (1.0 - b["done"]) * q_next
        z = self._z(x, b["u"], g)
        lc = nn.functional.mse_loss(self.q1(z, m), y) + nn.functional.mse_loss(self.q2(z, m), y)
        self.opt_critic.zero_grad()
        lc.backward()
        nn.utils.clip_grad_norm_(self.critic_params, c.grad_clip)
        self.opt_critic.step()
        self.updates += 1
        if self.updates % c.policy_delay == 0:
            u = self._u(self.actor_net, x, m)
            reg = ((u * u) * m).sum() / m.sum().clamp(min=1.0)
            la = -self.q1(self._z(x, u, g), m).mean() + c.u_l2 * reg
            self.opt_actor.zero_grad()
            la.backward()
            nn.utils.clip_grad_norm_(self.actor_net.parameters(), c.grad_clip)
            self.opt_actor.step()
            with torch.no_grad():
                for net, tgt in ((self.actor_net, self.actor_t), (self.q1, self.q1_t),
                                 (self.q2, self.q2_t)):
                    for p, t in zip(net.parameters(), tgt.parameters(), strict=True):
                        t.mul_(1 - c.tau).add_(c.tau * p)
        return float(lc.item())

    # ---- checkpoints
    def policy_params(self) -> dict[str, np.ndarray]:
        """The tensors the daemon serves (the actor only)."""
        return self.actor_net.numpy_params()

    def load_policy_params(self, tensors: dict[str, np.ndarray]) -> None:
        """Start from a checkpoint's actor (its target follows)."""
        self.actor_net.load_numpy(tensors)
        self.actor_t.load_state_dict(self.actor_net.state_dict())

    def describe(self) -> dict[str, Any]:
        return {"hidden": self.cfg.hidden, "config": self.cfg.__dict__}
