"""``linear``: the smallest learned policy, weight = exp(clip(norm(obs) . w + b)).

Exists to exercise the learned-policy path end to end (checkpoint loading,
feature-spec check, fallback) with no framework; trainers may also fit it.
Checkpoint tensors: ``w`` (F,), ``b`` (1,), optional ``mean``/``std`` (F,)
normalisation; metadata ``algorithm="linear"``, ``feature_names`` (must equal
this build's FEATURE_NAMES), optional ``mode`` ("sed", "wrandom", ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from marllb.daemon.features import FEATURE_NAMES, observation_matrix
from marllb.daemon.policies.base import MODE_NAMES, Policy, PolicyError, register_policy
from marllb.daemon.policies.checkpoint import load_checkpoint

_MODES = {v: k for k, v in MODE_NAMES.items()}


@register_policy("linear")
class LinearPolicy(Policy):
    learned = True

    def __init__(self, checkpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(checkpoint=checkpoint, **kwargs)
        tensors, meta = load_checkpoint(checkpoint, "linear")
        names = meta.get("feature_names")
        if list(names or []) != list(FEATURE_NAMES):
            raise PolicyError(f"linear: checkpoint {checkpoint} was trained on features "
                              f"{names}, this build has {list(FEATURE_NAMES)}")
        nf = len(FEATURE_NAMES)
        try:
            self.w = tensors["w"].astype(np.float64).reshape(nf)
            self.b = float(tensors["b"].reshape(-1)[0])
            self.mean = tensors.get("mean", np.zeros(nf)).astype(np.float64).reshape(nf)
            self.std = tensors.get("std", np.ones(nf)).astype(np.float64).reshape(nf)
        except (KeyError, ValueError) as e:
            raise PolicyError(f"linear: checkpoint {checkpoint}: bad tensor shapes: {e}") \
                from None
        self.std = np.where(self.std > 0, self.std, 1.0)
        mode = meta.get("mode", "sed")
        if mode not in _MODES:
            raise PolicyError(f"linear: checkpoint {checkpoint}: unknown mode {mode!r}")
        self.mode = _MODES[mode]  # type: ignore[misc]
        self.meta = meta

    def act(self, features: Any) -> np.ndarray:
        obs = (observation_matrix(features).astype(np.float64) - self.mean) / self.std
        return np.exp(np.clip(obs @ self.w + self.b, -20.0, 20.0))
