"""Rollouts of the residual policy through the daemon's own tick, for training.

Each LB of the simulated cluster runs the daemon's ``TickPipeline`` (snapshot
-> features -> policy -> sanitize -> msg_in) with a ``ResidualPolicy`` whose
``decide`` is replaced by the learner's actor (plus exploration) and records
what it saw and did.  So training sees exactly the inputs, baseline,
sanitising and data-plane selection that serving does.

Per LB-tick the episode keeps: the actor's inputs ``x`` (n, D), the up mask,
the log-multiplier taken ``u`` (n,) (a level index too, for the discrete
learners), training-only global extras ``g`` (n, G) for the centralised
critics (true jobs in system per unit of true capacity, true capacity share,
the other LBs' mean ``u`` on the server), and the team reward.

Reward (shared): minus the jobs in the system per unit of nominal capacity at
the next tick (Little: its time-average is arrival rate x mean JCT), minus a
penalty for each server that is full (worker cap and backlog: it refuses new
flows, and a rejected flow must not look cheap) as a fraction of the servers.
``shaped(ep, gamma)`` adds the potential-based shaping term
``gamma Phi(s') - Phi(s)`` with ``Phi = -load / (1 - gamma)`` (Ng et al. 1999:
the optimal policy is unchanged): the critic then learns what an action
changes, not the level of load the cluster happens to be at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from marllb.daemon import setnet
from marllb.daemon.policies.residual import ResidualPolicy
from marllb.sim.cluster import Cluster, scenario_trace
from marllb.sim.lb import W_MAX, W_MIN
from marllb.sim.scenario import Scenario

G_DIM = 3
FULL_PENALTY = 5.0       # reward units when every server is full (scaled by the fraction)

# actor(x (n,D), up (n,), lb k) -> (u (n,), level index (n,) or None)
Actor = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class LBTrace:
    """One LB's record over an episode (servers n fixed within a scenario)."""
    x: np.ndarray        # (T, n, D) float32
    up: np.ndarray       # (T, n) float32
    u: np.ndarray        # (T, n) float32
    a: np.ndarray        # (T, n) int64 level index (discrete learners), else zeros
    g: np.ndarray        # (T, n, G) float32


@dataclass
class Episode:
    lbs: list[LBTrace]
    reward: np.ndarray   # (T,) float32, reward of the step taken at t
    ret: float
    summary: dict[str, float]
    scenario: str
    load: np.ndarray | None = None   # (T,) jobs in system / nominal capacity at each tick


def shaped(ep: Episode, gamma: float) -> np.ndarray:
    """Rewards plus gamma Phi(s_{t+1}) - Phi(s_t), Phi = -load / (1 - gamma);
    the episode's end is terminal (Phi = 0 past it)."""
    if ep.load is None or len(ep.load) != len(ep.reward):
        return ep.reward
    phi = -ep.load.astype(np.float64) / (1.0 - gamma)
    nxt = np.append(phi[1:], 0.0)
    return (ep.reward + gamma * nxt - phi).astype(np.float32)


def meta_for(kind: str, algorithm: str, base: str, hidden: int, **extra: Any) -> dict[str, Any]:
    """Checkpoint metadata of a residual set network (validated by the daemon)."""
    return {"format": 1, "arch": setnet.ARCH, "algorithm": algorithm, "kind": kind,
            "inputs": {"names": list(setnet.INPUT_NAMES), "spec": setnet.FEATURE_SPEC},
            "base": base, "hidden": hidden, "u_max": setnet.U_MAX,
            "log_levels": list(setnet.LOG_LEVELS), "servers_min": 1, "servers_max": 256,
            **extra}


class _Recording(ResidualPolicy):
    """ResidualPolicy whose decision comes from a training actor, recorded."""

    def __init__(self, actor: Actor, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.actor = actor
        self.k = k
        self.rec: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def decide(self, x: np.ndarray, up: np.ndarray) -> np.ndarray:
        u, a = self.actor(x, up, self.k)
        self.rec.append((x, np.asarray(up, np.float32), np.asarray(u, np.float32), a))
        return u


def rollout(sc: Scenario, seed: int, actor: Actor, tensors: dict[str, np.ndarray],
            meta: dict[str, Any], record: bool = True) -> Episode:
    """One episode of ``sc`` (trace seed ``seed``) with ``actor`` deciding."""
    from marllb.daemon.tick import PolicySlot, TickPipeline

    cl = Cluster(sc, scenario_trace(sc, seed), meta["base"], seed=seed)
    gen = cl.ticks()
    nominal = np.array([g.cores * g.speed for g in sc.expanded_servers()])
    cap_tot = float(nominal.sum())
    ttl_ns = int(sc.ttl_ms * 1e6)
    pols: list[_Recording] = []
    pipes: list[Any] = []
    regions: list[Any] = []
    loads: list[float] = []
    gs: list[list[np.ndarray]] = []
    limit = np.array([g.workers + g.backlog for g in sc.expanded_servers()], dtype=np.float64)
    fulls: list[float] = []
    try:
        tick = next(gen)
        while True:
            if not pipes:
                for k, lb in enumerate(tick.lbs):
                    pol = _Recording(actor, k, algorithm=meta["algorithm"], tensors=tensors,
                                     meta=meta)
                    slot = PolicySlot("sed", None, "sed")
                    slot.policy, slot.name = pol, pol.name
                    pols.append(pol)
                    pipes.append(TickPipeline(slot, (seed * 7919 + k) | 1, seed=seed * 31 + k))
                    regions.append(lb.shm)    # the LB's Region (in memory)
            insys = np.asarray(tick.in_system, dtype=np.float64)
            cap = np.maximum(np.asarray(tick.capacity, dtype=np.float64), 1e-9)
            loads.append(float(insys.sum()) / cap_tot)
            fulls.append(float(np.mean(insys >= limit)))
            for lb, p, r in zip(tick.lbs, pipes, regions, strict=True):
                lb.timer(tick.now_ns)
                p.run_once(r, w_min=W_MIN, w_max=W_MAX, ttl_ns=ttl_ns)
            if record:
                gs.append(_globals(insys, cap, pols))
            tick = gen.send(False)
    except StopIteration as e:
        res = e.value
    T = len(loads)
    r = -(np.asarray(loads[1:] + [0.0]) + FULL_PENALTY * np.asarray(fulls[1:] + [0.0]))
    r = r.astype(np.float32)
    load = np.asarray(loads, dtype=np.float32)
    lbs = [_trace(p, gs, k) for k, p in enumerate(pols)] if record else []
    summ = res.summary()
    return Episode(lbs=lbs, reward=r[:T], ret=float(r.sum()), summary=summ, scenario=sc.name,
                   load=load)


def _globals(insys: np.ndarray, cap: np.ndarray, pols: list[_Recording]) -> list[np.ndarray]:
    n = insys.shape[0]
    us = [p.rec[-1][2] if p.rec and p.rec[-1][2].shape[0] == n else np.zeros(n) for p in pols]
    tot = np.sum(us, axis=0)
    out = []
    for k in range(len(pols)):
        g = np.empty((n, G_DIM), np.float32)
        g[:, 0] = np.log1p(insys / cap)
        g[:, 1] = np.log(cap / cap.mean())
        g[:, 2] = (tot - us[k]) / max(len(pols) - 1, 1)
        out.append(g)
    return out


def _trace(p: _Recording, gs: list[list[np.ndarray]], k: int) -> LBTrace:
    rec = p.rec
    T = min(len(rec), len(gs))
    if T == 0:
        D = setnet.N_INPUTS
        return LBTrace(np.zeros((0, 0, D), np.float32), np.zeros((0, 0), np.float32),
                       np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64),
                       np.zeros((0, 0, G_DIM), np.float32))
    # the policy acts once per tick per LB; the first ticks may lack a frame
    off = len(gs) - T
    a0 = rec[0][3]
    return LBTrace(
        x=np.stack([r[0] for r in rec[-T:]]), up=np.stack([r[1] for r in rec[-T:]]),
        u=np.stack([r[2] for r in rec[-T:]]),
        a=np.stack([r[3] for r in rec[-T:]]) if a0 is not None
        else np.zeros((T, rec[0][0].shape[0]), np.int64),
        g=np.stack([g[k] for g in gs[off:]]))



class Replay:
    """LB-tick transitions of whole episodes; batches padded to the largest set."""

    def __init__(self, capacity_ticks: int = 200_000) -> None:
        self.items: list[tuple[LBTrace, np.ndarray]] = []   # (trace, its rewards)
        self.capacity = capacity_ticks
        self.ticks = 0

    def add(self, ep: Episode, gamma: float | None = None) -> None:
        """Keep ``ep``'s LB traces; with ``gamma``, its shaped rewards (``shaped``)."""
        rew = ep.reward if gamma is None else shaped(ep, gamma)
        for tr in ep.lbs:
            T = tr.x.shape[0]
            if T < 2:
                continue
            self.items.append((tr, rew[-T:]))
            self.ticks += T
        while self.ticks > self.capacity and len(self.items) > 1:
            self.ticks -= self.items.pop(0)[0].x.shape[0]

    def __len__(self) -> int:
        return self.ticks

    def sample(self, batch: int, rng: np.random.Generator, groups: int = 8
               ) -> dict[str, np.ndarray]:
        """``batch`` transitions from ``groups`` random LB-episodes (length-weighted):
        x, m, u, a, g, r, x2, m2, g2, done; sets padded with m = 0."""
        lens = np.array([it[0].x.shape[0] for it in self.items], dtype=np.float64)
        pick = rng.choice(len(self.items), size=groups, p=lens / lens.sum())
        per = [batch // groups + (1 if i < batch % groups else 0) for i in range(groups)]
        N = max(self.items[i][0].x.shape[1] for i in pick)
        D = self.items[pick[0]][0].x.shape[2]
        out = {"x": np.zeros((batch, N, D), np.float32), "m": np.zeros((batch, N), np.float32),
               "u": np.zeros((batch, N), np.float32), "a": np.zeros((batch, N), np.int64),
               "g": np.zeros((batch, N, G_DIM), np.float32),
               "x2": np.zeros((batch, N, D), np.float32),
               "m2": np.zeros((batch, N), np.float32),
               "g2": np.zeros((batch, N, G_DIM), np.float32),
               "r": np.zeros(batch, np.float32), "done": np.zeros(batch, np.float32)}
        b0 = 0
        for i, k in zip(pick, per, strict=True):
            tr, rew = self.items[i]
            T, n = tr.x.shape[0], tr.x.shape[1]
            t = rng.integers(0, T, size=k)
            t2 = np.minimum(t + 1, T - 1)
            s = slice(b0, b0 + k)
            out["x"][s, :n] = tr.x[t]
            out["m"][s, :n] = tr.up[t]
            out["u"][s, :n] = tr.u[t]
            out["a"][s, :n] = tr.a[t]
            out["g"][s, :n] = tr.g[t]
            out["x2"][s, :n] = tr.x[t2]
            out["m2"][s, :n] = tr.up[t2]
            out["g2"][s, :n] = tr.g[t2]
            out["r"][s] = rew[t]
            out["done"][s] = (t == T - 1)
            b0 += k
        return out
