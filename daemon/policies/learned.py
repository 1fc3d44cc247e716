"""Learned policies v1 (``qmix_v1``, ``sac_gru_v1``): a trained GRU agent serving weights.

The names ``qmix`` and ``sac_gru`` are served by ``residual.py``, which loads
a v1 GRU checkpoint with the classes here (``V1``) and a v2 set-network one
with its own.

Both load a checkpoint (``checkpoint=PATH``; default: the one shipped in
``marllb/daemon/checkpoints/``), validate it, and per tick run the shared
agent network (``marllb.daemon.nets``, numpy) over the LB's servers: inputs
from the daemon's own ``observation_matrix``, one GRU hidden vector per server
carried across ticks, greedy level per server (argmax of Q for QMIX, of the
policy logits for SAC), weight = static weight x level, for the data plane's
SED selection.  Hidden state and last levels are forgotten in ``reset`` (the
daemon calls it on (re)attach) and whenever the data plane's generation or
the server table changes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from marllb.daemon import checkpoint as ckpt
from marllb.daemon._core import lib
from marllb.daemon.nets import NOOP_LEVEL, InputBuilder, NumpyAgent
from marllb.daemon.policies.base import Policy, PolicyError, register_policy


def level_weights(static: Any, levels: np.ndarray, a: np.ndarray) -> np.ndarray:
    """THE level -> weight map (daemon and training env): static weight (at
    least 1e-6) x levels[a], per server."""
    return np.maximum(np.asarray(static, dtype=np.float64), 1e-6) * np.asarray(levels)[a]


class LearnedPolicy(Policy):
    """Greedy inference of a trained agent; subclasses name the algorithm."""

    algorithm: ClassVar[str] = ""
    shipped_name: ClassVar[str] = ""       # default checkpoint in daemon/checkpoints/
    mode = lib.MLB_MODE_SED
    learned = True

    def __init__(self, checkpoint: str | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise PolicyError(
                f"policy {self.name!r} takes no option(s) {', '.join(sorted(kwargs))}")
        path = str(checkpoint) if checkpoint else \
            str(ckpt.shipped(self.shipped_name or self.algorithm))
        super().__init__(checkpoint=path)
        try:
            tensors, meta = ckpt.load(path)
            ckpt.validate(tensors, meta, path, algorithm=self.algorithm)
            self.net = NumpyAgent(tensors)
        except (ckpt.CheckpointError, ValueError) as e:
            raise PolicyError(str(e)) from None
        self.meta = meta
        feats = meta["features"]
        self.mean = np.asarray(feats["mean"], dtype=np.float64)
        self.std = np.asarray(feats["std"], dtype=np.float64)
        self.levels = np.asarray(meta["levels"], dtype=np.float64)
        self.inputs = InputBuilder(self.mean, self.std, len(self.levels))
        self.noop = int(np.argmin(np.abs(np.log(self.levels)))) if len(self.levels) \
            else NOOP_LEVEL
        self._gen: int | None = None
        self._ids: np.ndarray | None = None
        self.reset(0)

    def reset(self, n_servers: int) -> None:
        n = int(n_servers)
        if n > 0:
            try:
                ckpt.check_servers(self.meta, n, self.checkpoint)
            except ckpt.CheckpointError as e:
                raise PolicyError(str(e)) from None
        super().reset(n)
        self.h = self.net.init_hidden(n)
        self.prev = np.full(n, self.noop, dtype=np.int64)
        self._gen = None
        self._ids = None

    def scores(self, features: Any) -> np.ndarray:
        """Advance the hidden state one tick; (n, levels) scores (a work
        buffer of the network, valid until the next call)."""
        n = features.n
        if n != self.n_servers or (self._gen is not None and features.dp_gen != self._gen) \
                or (self._ids is not None and not np.array_equal(self._ids,
                                                                 features.server_id)):
            self.reset(n)
        self._gen = features.dp_gen
        if self._ids is None:
            self._ids = np.array(features.server_id)
        x = self.inputs(features, self.prev)
        return self.net.core(x, self.h)        # all servers in one batched step, h in place

    def act(self, features: Any) -> np.ndarray:
        q = self.scores(features)
        if q.shape[0] == 0:
            return np.zeros(0)
        a = np.argmax(q, axis=1)
        self.prev = a
        # non-finite scores propagate (NaN weights) so the daemon falls back loudly
        w = level_weights(features.static_weight, self.levels, a)
        if not np.isfinite(q).all():
            w[~np.all(np.isfinite(q), axis=1)] = np.nan
        return w

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(algorithm=self.algorithm, scenario=self.meta.get("scenario"),
                 trained_servers=self.meta.get("n_servers"), levels=list(self.levels))
        return d


@register_policy("qmix_v1")
class QmixPolicy(LearnedPolicy):
    """QMIX-trained GRU agent (greedy in the per-server utilities)."""

    algorithm = "qmix"
    shipped_name = "qmix_v1"


@register_policy("sac_gru_v1")
class SacGruPolicy(LearnedPolicy):
    """Discrete-SAC-trained GRU actor (most probable level per server)."""

    algorithm = "sac_gru"
    shipped_name = "sac_gru_v1"


# v1 checkpoints served under the learned names (see residual.py)
V1: dict[str, type[LearnedPolicy]] = {"qmix": QmixPolicy, "sac_gru": SacGruPolicy}
