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

from marllb.daemon.features import FEATURE_NAMES

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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class NumpyAgent:
    """fc1 -> ReLU -> GRUCell -> head, torch's parameter layout and gate order."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        missing = [k for k in PARAM_SHAPES if k not in params]
        if missing:
            raise ValueError(f"agent parameters missing: {', '.join(missing)}")
        p = {k: np.asarray(params[k], dtype=np.float32) for k in PARAM_SHAPES}
        self.w1t = np.ascontiguousarray(p["fc1.weight"].T)
        self.b1 = p["fc1.bias"]
        self.wiht = np.ascontiguousarray(p["gru.weight_ih"].T)
        self.whht = np.ascontiguousarray(p["gru.weight_hh"].T)
        self.bih = p["gru.bias_ih"]
        self.bhh = p["gru.bias_hh"]
        self.wht = np.ascontiguousarray(p["head.weight"].T)
        self.bh = p["head.bias"]
        self.in_dim = self.w1t.shape[0]
        self.hidden = self.whht.shape[0]
        self.n_out = self.wht.shape[1]
        if self.wiht.shape != (self.w1t.shape[1], 3 * self.hidden) or \
                self.wht.shape[0] != self.hidden:
            raise ValueError("agent parameter shapes are inconsistent")

    def init_hidden(self, n: int) -> np.ndarray:
        return np.zeros((n, self.hidden), dtype=np.float32)

    def step(self, x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, in_dim), (n, hidden) -> (n, n_out) scores, (n, hidden) new hidden."""
        e = np.maximum(x @ self.w1t + self.b1, 0.0)
        gi = e @ self.wiht + self.bih
        gh = h @ self.whht + self.bhh
        H = self.hidden
        r = _sigmoid(gi[:, :H] + gh[:, :H])
        z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        c = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h2 = ((1.0 - z) * c + z * h).astype(np.float32)
        return h2 @ self.wht + self.bh, h2
