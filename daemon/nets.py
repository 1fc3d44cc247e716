"""The learned agent's inputs and network, in numpy: what the daemon runs.

One network with shared parameters scores every server of an LB: per server it
sees that server's row of ``features.observation_matrix`` (log-compressed and
normalised with statistics stored in the checkpoint), the same row relative to
the LB's mean over its up servers, and the level it chose last tick (one-hot).
A GRU cell carries one hidden vector per server across ticks, and a linear
head scores the action levels (Q-values for QMIX, logits for SAC).

Action levels multiply the server's configured static weight:
``LEVELS = (0.25, 0.5, 1, 2, 4)``.  Log-spaced and centred on 1 so that
"do nothing" (the static weights, already right in S1) is one action, and any
ratio up to 16:1 between two servers is reachable: a 4:1 capacity gap under
equal (misconfigured) static weights needs 4:1 (levels 2 vs 0.5), and a
server halved by interference can be halved.  The paper's {1.0..2.0} cannot
express either.  The weights feed the data plane's SED selection
(argmin (active+1)/w), which already balances within a tick; the policy only
has to get the capacity ratios right.

The same functions are used by the trainers in ``marllb.sim`` (the torch
modules there mirror these parameter names), so training and serving cannot
drift.  Numpy because one forward over 64 servers is tens of microseconds
and needs no torch import in the daemon.
"""

from __future__ import annotations

import numpy as np

from marllb.daemon._core import lib
from marllb.daemon.features import FEATURE_NAMES, MAX_COUNT, Features, observation_into

MLB_ADMIN_UP = lib.MLB_ADMIN_UP

LEVELS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
NOOP_LEVEL = LEVELS.index(1.0)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_SPEC = "log1p-z+rel-mean-up+prev-onehot/v1"
PARAM_SHAPES = ("fc1.weight", "fc1.bias", "gru.weight_ih", "gru.weight_hh",
                "gru.bias_ih", "gru.bias_hh", "head.weight", "head.bias")


def input_dim(n_levels: int = len(LEVELS)) -> int:
    return 2 * N_FEATURES + n_levels


def compress(obs: np.ndarray) -> np.ndarray:
    """log1p of the (non-negative) observation matrix, float64."""
    return np.log1p(np.maximum(np.asarray(obs, dtype=np.float64), 0.0))


def agent_inputs(obs: np.ndarray, up: np.ndarray, prev_action: np.ndarray,
                 mean: np.ndarray, std: np.ndarray, n_levels: int = len(LEVELS)) -> np.ndarray:
    """(n, F) observation matrix -> (n, input_dim) float32 network inputs."""
    a = compress(obs)
    n = a.shape[0]
    z = (a - mean) / std
    up = np.asarray(up, dtype=bool)
    ref = a[up].mean(axis=0) if up.any() else np.zeros(a.shape[1])
    rel = a - ref
    onehot = np.zeros((n, n_levels))
    onehot[np.arange(n), np.clip(prev_action, 0, n_levels - 1)] = 1.0
    x = np.concatenate([z, rel, onehot], axis=1)
    return np.clip(np.nan_to_num(x, nan=0.0, posinf=10.0, neginf=-10.0), -10.0, 10.0
                   ).astype(np.float32)


class GruStep:
    """fc1 -> ReLU -> GRUCell -> head over a batch of agents, in place.

    Takes the weight arrays (torch's layout: ``(out, in)`` matrices, gate
    order r, z, n) and keeps float32 work buffers sized for the largest batch
    seen, so a step allocates nothing: all agents (servers) in one matmul per
    layer, the hidden state updated in the caller's array.  float32 matches
    the torch trainer to ~1e-6 (tests/test_learned.py holds the daemon to
    rtol 1e-4 / atol 1e-5 of it).  Reusable by any network built on the
    same GRU cell."""

    def __init__(self, fc1_w: np.ndarray, fc1_b: np.ndarray, w_ih: np.ndarray,
                 w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray,
                 head_w: np.ndarray, head_b: np.ndarray) -> None:
        f32 = np.float32
        self.w1t = np.ascontiguousarray(np.asarray(fc1_w, dtype=f32).T)
        self.b1 = np.asarray(fc1_b, dtype=f32)
        self.wiht = np.ascontiguousarray(np.asarray(w_ih, dtype=f32).T)
        self.whht = np.ascontiguousarray(np.asarray(w_hh, dtype=f32).T)
        self.bih = np.asarray(b_ih, dtype=f32)
        self.bhh = np.asarray(b_hh, dtype=f32)
        self.wht = np.ascontiguousarray(np.asarray(head_w, dtype=f32).T)
        self.bh = np.asarray(head_b, dtype=f32)
        self.in_dim = self.w1t.shape[0]
        self.hidden = self.whht.shape[0]
        self.n_out = self.wht.shape[1]
        if self.wiht.shape != (self.w1t.shape[1], 3 * self.hidden) or \
                self.whht.shape != (self.hidden, 3 * self.hidden) or \
                self.wht.shape[0] != self.hidden or self.b1.shape != (self.w1t.shape[1],) or \
                self.bih.shape != (3 * self.hidden,) or self.bhh.shape != (3 * self.hidden,) or \
                self.bh.shape != (self.n_out,):
            raise ValueError("agent parameter shapes are inconsistent")
        self._cap = -1
        self._alloc(64)

    def _alloc(self, n: int) -> None:
        if n <= self._cap:
            return
        z = np.zeros
        self._e = z((n, self.w1t.shape[1]), np.float32)
        self._gi = z((n, 3 * self.hidden), np.float32)
        self._gh = z((n, 3 * self.hidden), np.float32)
        self._rz = z((n, 2 * self.hidden), np.float32)
        self._c = z((n, self.hidden), np.float32)
        self._q = z((n, self.n_out), np.float32)
        self._cap = n

    def __call__(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """x (n, in_dim) float32; h (n, hidden) float32, updated in place to
        the new hidden state.  Returns the (n, n_out) scores: a view of a work
        buffer, valid until the next call."""
        n, H = x.shape[0], self.hidden
        self._alloc(n)
        e, gi, gh = self._e[:n], self._gi[:n], self._gh[:n]
        rz, c, q = self._rz[:n], self._c[:n], self._q[:n]
        np.matmul(x, self.w1t, out=e)
        e += self.b1
        np.maximum(e, 0.0, out=e)
        np.matmul(e, self.wiht, out=gi)
        gi += self.bih
        np.matmul(h, self.whht, out=gh)
        gh += self.bhh
        np.add(gi[:, :2 * H], gh[:, :2 * H], out=rz)
        rz *= 0.5                                   # sigmoid(v) = (1 + tanh(v / 2)) / 2
        np.tanh(rz, out=rz)
        rz += 1.0
        rz *= 0.5
        np.multiply(rz[:, :H], gh[:, 2 * H:], out=c)   # candidate: tanh(i_n + r * h_n)
        c += gi[:, 2 * H:]
        np.tanh(c, out=c)
        h -= c                                      # h' = (1 - z) c + z h = c + z (h - c)
        h *= rz[:, H:]
        h += c
        np.matmul(h, self.wht, out=q)
        q += self.bh
        return q


class NumpyAgent:
    """fc1 -> ReLU -> GRUCell -> head, torch's parameter layout and gate order.

    ``step`` returns fresh arrays (the trainers keep them); the daemon calls
    ``core`` (a ``GruStep``) directly to step in place."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        missing = [k for k in PARAM_SHAPES if k not in params]
        if missing:
            raise ValueError(f"agent parameters missing: {', '.join(missing)}")
        self.core = GruStep(*(params[k] for k in PARAM_SHAPES))
        self.in_dim = self.core.in_dim
        self.hidden = self.core.hidden
        self.n_out = self.core.n_out

    def init_hidden(self, n: int) -> np.ndarray:
        return np.zeros((n, self.hidden), dtype=np.float32)

    def step(self, x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, in_dim), (n, hidden) -> (n, n_out) scores, (n, hidden) new hidden."""
        h2 = np.array(h, dtype=np.float32)
        q = self.core(np.ascontiguousarray(x, dtype=np.float32), h2)
        return q.copy(), h2


class InputBuilder:
    """``agent_inputs(observation_matrix(f), ...)`` into one preallocated
    float32 buffer: the daemon's per-tick path (same columns, same
    normalisation; float32 arithmetic, within ~1e-6 of the float64 original)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_levels: int = len(LEVELS)) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.n_levels = n_levels
        self._cap = -1
        self._alloc(64)

    def _alloc(self, n: int) -> None:
        if n <= self._cap:
            return
        self._x = np.zeros((n, 2 * N_FEATURES + self.n_levels), dtype=np.float32)
        self._up = np.zeros(n, dtype=np.float32)
        self._rows = np.arange(n)
        self._ref = np.zeros(N_FEATURES, dtype=np.float32)
        self._cap = n

    def __call__(self, features: Features, prev_action: np.ndarray) -> np.ndarray:
        """(n, input_dim) float32 inputs: a view of the buffer, valid until the next call."""
        n, F = features.n, N_FEATURES
        self._alloc(n)
        x = self._x[:n]
        z, a, onehot = x[:, :F], x[:, F:2 * F], x[:, 2 * F:]
        observation_into(features, a)
        np.nan_to_num(a, copy=False, nan=0.0, posinf=MAX_COUNT, neginf=0.0)
        np.maximum(a, 0.0, out=a)
        np.log1p(a, out=a)                                  # compress()
        np.subtract(a, self.mean, out=z)
        np.divide(z, self.std, out=z)
        up = self._up[:n]
        np.equal(features.admin_state, MLB_ADMIN_UP, out=up, casting="unsafe")
        n_up = float(up.sum())
        if n_up > 0:
            np.matmul(up, a, out=self._ref)
            self._ref /= n_up
            a -= self._ref                                  # relative to the up servers' mean
        onehot[:] = 0.0
        onehot[self._rows[:n], np.clip(prev_action, 0, self.n_levels - 1)] = 1.0
        np.nan_to_num(x, copy=False, nan=0.0, posinf=10.0, neginf=-10.0)
        np.clip(x, -10.0, 10.0, out=x)
        return x
