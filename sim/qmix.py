"""QMIX for the marllb env, CleanRL-style: everything the algorithm does, in one file.

- Agent: ONE GRU network with shared parameters (``Agent``; parameter names
  match ``marllb.daemon.nets.NumpyAgent``, which acts in rollouts and in the
  daemon).  A QMIX "agent" is one (LB, server) pair: per tick it picks that
  server's weight level from its own LB's observation row (plus LB-relative
  context and its last level).  Decentralised: nothing crosses LBs at serving.
- Mixer: monotonic hypernetwork mixing of all agents' chosen Q-values,
  conditioned on the global state (true per-server load; training only).
- Targets: target agent + target mixer (hard copy every ``target_every``
  updates); double-Q (online argmax, target value); n-step returns; a
  terminal bootstrap of 0 past the end of an episode (the cluster drained).
- Replay of whole episodes; updates on random windows with a burn-in that
  warms the GRU hidden state without gradients.
- Exploration: epsilon-greedy per agent, the schedule set by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from marllb.daemon.nets import NumpyAgent
from marllb.sim.marl_env import Episode


@dataclass
class QmixConfig:
    hidden: int = 64
    mixer_embed: int = 32
    lr: float = 5e-4
    gamma: float = 0.95
    n_step: int = 5
    burn_in: int = 8
    window: int = 32
    batch: int = 32
    target_every: int = 200
    buffer_episodes: int = 300
    grad_clip: float = 10.0


class Agent(nn.Module):
    """fc1 -> ReLU -> GRUCell -> head (one score per level)."""

    def __init__(self, in_dim: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.gru = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, n_out)
        self.hidden = hidden

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, N, D), h: (N, H) -> scores (T, N, K), last hidden."""
        out = []
        for t in range(x.shape[0]):
            h = self.gru(torch.relu(self.fc1(x[t])), h)
            out.append(self.head(h))
        return torch.stack(out), h

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}


class Mixer(nn.Module):
    """Q_tot = w2 . elu(W1 q + b1) + b2 with |W1|, |w2| from hypernetworks on s."""

    def __init__(self, n_agents: int, state_dim: int, embed: int) -> None:
        super().__init__()
        self.n, self.e = n_agents, embed
        self.hw1 = nn.Sequential(nn.Linear(state_dim, 64), nn.ReLU(),
                                 nn.Linear(64, n_agents * embed))
        self.hb1 = nn.Linear(state_dim, embed)
        self.hw2 = nn.Sequential(nn.Linear(state_dim, 64), nn.ReLU(), nn.Linear(64, embed))
        self.hb2 = nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """q: (..., A), s: (..., S) -> (...)."""
        lead = q.shape[:-1]
        q = q.reshape(-1, 1, self.n)
        s = s.reshape(-1, s.shape[-1])
        w1 = torch.abs(self.hw1(s)).view(-1, self.n, self.e)
        hid = torch.nn.functional.elu(torch.bmm(q, w1) + self.hb1(s).unsqueeze(1))
        w2 = torch.abs(self.hw2(s)).view(-1, self.e, 1)
        return (torch.bmm(hid, w2).view(-1) + self.hb2(s).view(-1)).view(lead)


class Replay:
    """Whole episodes; samples padded windows (valid mask past the end)."""

    def __init__(self, capacity: int) -> None:
        self.eps: list[Episode] = []
        self.capacity = capacity

    def add(self, ep: Episode) -> None:
        if len(ep.reward):
            self.eps.append(ep)
            if len(self.eps) > self.capacity:
                self.eps.pop(0)

    def __len__(self) -> int:
        return len(self.eps)

    def sample(self, batch: int, width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lens = np.array([len(e.reward) for e in self.eps], dtype=np.float64)
        idx = rng.choice(len(self.eps), size=batch, p=lens / lens.sum())
        e0 = self.eps[0]
        A, D, S = e0.x.shape[1], e0.x.shape[2], e0.state.shape[1]
        x = np.zeros((width, batch, A, D), np.float32)
        act = np.zeros((width, batch, A), np.int64)
        st = np.zeros((width, batch, S), np.float32)
        rew = np.zeros((width, batch), np.float32)
        valid = np.zeros((width, batch), np.float32)
        amask = np.zeros((batch, A), np.float32)
        for b, i in enumerate(idx):
            e = self.eps[i]
            T = len(e.reward)
            s0 = int(rng.integers(0, T))
            n = min(width, T - s0)
            x[:n, b] = e.x[s0:s0 + n]
            act[:n, b] = e.actions[s0:s0 + n]
            st[:n, b] = e.state[s0:s0 + n]
            rew[:n, b] = e.reward[s0:s0 + n]
            valid[:n, b] = 1.0
            amask[b] = e.amask
        return {"x": x, "act": act, "state": st, "rew": rew, "valid": valid, "amask": amask}

    def sample_windows(self, c: Any, rng: np.random.Generator,
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """A batch of burn-in + window + n-step sequences as tensors (both learners'
        config has batch, burn_in, window, n_step, hidden): the batch, the
        observations flattened to (W, B*A, D) for the GRU, and its zero hidden state."""
        width = c.burn_in + c.window + c.n_step
        b = {k: torch.from_numpy(v) for k, v in self.sample(c.batch, width, rng).items()}
        W, B, A, D = b["x"].shape
        return b, b["x"].reshape(W, B * A, D), torch.zeros(B * A, c.hidden)


def nstep_targets(rew: torch.Tensor, valid: torch.Tensor, boot: torch.Tensor,
                  gamma: float, n: int, start: int, length: int) -> torch.Tensor:
    """y_t = sum_{i<n} g^i r_{t+i} + g^n boot_{t+n} for t in [start, start+length);
    anything past the end of the episode (valid 0) contributes 0."""
    ys = []
    for t in range(start, start + length):
        y = torch.zeros_like(rew[0])
        for i in range(n):
            y = y + (gamma ** i) * rew[t + i] * valid[t + i]
        ys.append(y + (gamma ** n) * boot[t + n] * valid[t + n])
    return torch.stack(ys)


class QMIX:
    def __init__(self, obs_dim: int, state_dim: int, n_agents: int, n_levels: int,
                 cfg: QmixConfig | None = None, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg = cfg or QmixConfig()
        c = self.cfg
        self.n_levels = n_levels
        self.agent = Agent(obs_dim, c.hidden, n_levels)
        self.mixer = Mixer(n_agents, state_dim, c.mixer_embed)
        self.t_agent = Agent(obs_dim, c.hidden, n_levels)
        self.t_mixer = Mixer(n_agents, state_dim, c.mixer_embed)
        self._sync()
        self.params = list(self.agent.parameters()) + list(self.mixer.parameters())
        self.opt = torch.optim.Adam(self.params, lr=c.lr)
        self.updates = 0

    def _sync(self) -> None:
        self.t_agent.load_state_dict(self.agent.state_dict())
        self.t_mixer.load_state_dict(self.mixer.state_dict())

    def actor(self, eps: float, rng: np.random.Generator, greedy: bool = False):  # noqa: ANN201
        """An act_fn for MarlEnv.rollout: the numpy agent, epsilon-greedy per server."""
        net = NumpyAgent(self.agent.numpy_params())
        hs: list[np.ndarray] = []

        def act(inputs: list[np.ndarray]) -> list[np.ndarray]:
            if not hs:
                hs.extend(net.init_hidden(x.shape[0]) for x in inputs)
            out = []
            for k, x in enumerate(inputs):
                q, hs[k] = net.step(x, hs[k])
                a = np.argmax(q, axis=1)
                r = rng.random(a.shape[0]) < eps
                a[r] = rng.integers(0, self.n_levels, size=int(r.sum()))
                out.append(a)
            return out

        return act

    def update(self, buf: Replay, rng: np.random.Generator) -> float:
        c = self.cfg
        b, x, h0 = buf.sample_windows(c, rng)
        W, B, A, _ = b["x"].shape
        with torch.no_grad():
            _, hb = self.agent(x[: c.burn_in], h0)
            qt_all, _ = self.t_agent(x, h0)
        q, _ = self.agent(x[c.burn_in:], hb)
        q = q.reshape(W - c.burn_in, B, A, -1)
        qt_all = qt_all.reshape(W, B, A, -1)
        amask = b["amask"]
        act = b["act"][c.burn_in:]
        chosen = q.gather(-1, act.unsqueeze(-1)).squeeze(-1) * amask
        qtot = self.mixer(chosen, b["state"][c.burn_in:])          # (W - burn, B)
        with torch.no_grad():
            best = q.argmax(-1)                                      # double-Q: online argmax
            tq = qt_all[c.burn_in:].gather(-1, best.unsqueeze(-1)).squeeze(-1) * amask
            boot = self.t_mixer(tq, b["state"][c.burn_in:])
            y = nstep_targets(b["rew"][c.burn_in:], b["valid"][c.burn_in:], boot,
                              c.gamma, c.n_step, 0, c.window)
        v = b["valid"][c.burn_in: c.burn_in + c.window]
        td = (qtot[: c.window] - y) * v
        loss = torch.nn.functional.smooth_l1_loss(td, torch.zeros_like(td), reduction="sum") \
            / v.sum().clamp(min=1.0)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.opt.step()
        self.updates += 1
        if self.updates % c.target_every == 0:
            self._sync()
        return float(loss.item())

    def load_policy_params(self, tensors: dict[str, np.ndarray]) -> None:
        """Start from a checkpoint's agent (targets follow)."""
        self.agent.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()})
        self._sync()

    def policy_params(self) -> dict[str, np.ndarray]:
        """The tensors the daemon serves (the agent only)."""
        return self.agent.numpy_params()


# ---------------------------------------------------------------------------
# QMIX on the residual set network (v2): agents are the servers of each LB,
# one shared SetNet scores the log-multiplier levels of ``setnet.LOG_LEVELS``
# on top of the adaptive baseline; the mixer is monotonic over the set of
# chosen utilities, its non-negative per-server weights from a hypernetwork on
# the training-only global state of each server (any server count).

@dataclass
class SetQmixConfig:
    hidden: int = 64
    mixer_hidden: int = 64
    lr: float = 5e-4
    gamma: float = 0.9
    tau: float = 0.01
    batch: int = 128
    grad_clip: float = 10.0
    buffer_ticks: int = 200_000


class SetMixer(nn.Module):
    """Q_tot = mean_j |w(g_j, gbar)| q_j + b(gbar, gmax): monotonic in every q_j."""

    def __init__(self, g_dim: int, hidden: int) -> None:
        super().__init__()
        self.hw = nn.Sequential(nn.Linear(2 * g_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.hb = nn.Sequential(nn.Linear(2 * g_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, q: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """q (B, N), g (B, N, G), m (B, N) -> (B,)."""
        from marllb.sim.setnet import masked_mean

        gbar = masked_mean(g, m)
        gmax = (g - 1e6 * (1 - m.unsqueeze(-1))).max(1).values
        w = torch.abs(self.hw(torch.cat([g, gbar.unsqueeze(1).expand_as(g)], -1))).squeeze(-1)
        mix = (w * q * m).sum(1) / m.sum(1).clamp(min=1.0)
        return mix + self.hb(torch.cat([gbar, gmax], -1)).squeeze(-1)


class SetQmix:
    kind = "discrete"

    def __init__(self, cfg: SetQmixConfig | None = None, seed: int = 0) -> None:
        import copy

        from marllb.daemon import setnet
        from marllb.sim.residual_env import G_DIM
        from marllb.sim.setnet import SetNet

        torch.manual_seed(seed)
        self.cfg = c = cfg or SetQmixConfig()
        self.K = len(setnet.LOG_LEVELS)
        self.agent = SetNet(setnet.N_INPUTS, c.hidden, self.K, noop_bias=1e-3)
        self.mixer = SetMixer(G_DIM, c.mixer_hidden)
        self.t_agent, self.t_mixer = copy.deepcopy(self.agent), copy.deepcopy(self.mixer)
        self.params = list(self.agent.parameters()) + list(self.mixer.parameters())
        self.opt = torch.optim.Adam(self.params, lr=c.lr)
        self.updates = 0

    def actor(self, eps: float, rng: np.random.Generator, greedy: bool = False):  # noqa: ANN201
        """An Actor for ``residual_env.rollout``: greedy levels, epsilon-random per server."""
        from marllb.daemon import setnet

        net = setnet.NumpySetNet(self.agent.numpy_params())
        levels = np.asarray(setnet.LOG_LEVELS)

        def act(x: np.ndarray, up: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            u = setnet.log_multiplier(net.forward(x, up), "discrete")
            a = np.searchsorted(levels, u - 1e-9)
            if not greedy and eps > 0:
                r = rng.random(a.shape[0]) < eps
                a[r] = rng.integers(0, self.K, size=int(r.sum()))
            return levels[a], a

        return act

    def update(self, buf: Any, rng: np.random.Generator) -> float:
        c = self.cfg
        b = {k: torch.from_numpy(v) for k, v in buf.sample(c.batch, rng).items()}
        q = self.agent(b["x"], b["m"]).gather(-1, b["a"].unsqueeze(-1)).squeeze(-1)
        qtot = self.mixer(q, b["g"], b["m"])
        with torch.no_grad():
            best = self.agent(b["x2"], b["m2"]).argmax(-1, keepdim=True)   # double-Q
            q2 = self.t_agent(b["x2"], b["m2"]).gather(-1, best).squeeze(-1)
            y = b["r"] + c.gamma * (1.0 - b["done"]) * self.t_mixer(q2, b["g2"], b["m2"])
        loss = nn.functional.smooth_l1_loss(qtot, y)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.opt.step()
        self.updates += 1
        with torch.no_grad():
            for net, tgt in ((self.agent, self.t_agent), (self.mixer, self.t_mixer)):
                for p, t in zip(net.parameters(), tgt.parameters(), strict=True):
                    t.mul_(1 - c.tau).add_(c.tau * p)
        return float(loss.item())

    def policy_params(self) -> dict[str, np.ndarray]:
        return self.agent.numpy_params()

    def load_policy_params(self, tensors: dict[str, np.ndarray]) -> None:
        self.agent.load_numpy(tensors)
        self.t_agent.load_state_dict(self.agent.state_dict())
