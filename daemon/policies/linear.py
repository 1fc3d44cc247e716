"""``linear``: the smallest learned policy, weight = exp(clip(norm(obs) . w + b)).

Exists to exercise the learned-policy path end to end (checkpoint loading,
feature-set check, fallback) without training a network; a trainer may fit it
too.  The checkpoint uses the project's one format (``marllb.daemon.checkpoint``:
``NAME.safetensors`` tensors + ``NAME.json`` metadata, never a pickle).
Tensors: ``w`` (F,), ``b`` (1,), optional ``mean``/``std`` (F,).  Metadata:
``format`` 1, ``algorithm`` "linear", ``features.names`` (must equal this
build's FEATURE_NAMES), optional ``mode`` ("sed", "wcmp", "lsq", ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marllb.daemon import checkpoint as ckpt
from marllb.daemon.features import FEATURE_NAMES, observation_matrix
from marllb.daemon.policies.base import MODE_IDS, Policy, PolicyError, register_policy

_MODES = MODE_IDS


def save_linear(path: str, w: np.ndarray, b: float = 0.0, mode: str = "sed") -> str:
    """Write a linear-policy checkpoint (tests, simple fits)."""
    meta = {"format": ckpt.FORMAT, "algorithm": "linear", "mode": mode,
            "features": {"names": list(FEATURE_NAMES)}}
    return str(ckpt.save(path, {"w": np.asarray(w, dtype=np.float32),
                                "b": np.array([b], dtype=np.float32)}, meta))


@register_policy("linear")
class LinearPolicy(Policy):
    learned = True

    def __init__(self, checkpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(checkpoint=checkpoint, **kwargs)
        if not checkpoint:
            raise PolicyError("linear: no checkpoint configured")
        try:
            tensors, meta = ckpt.load(checkpoint)
        except ckpt.CheckpointError as e:
            raise PolicyError(f"linear: {e}") from None
        where = checkpoint
        if meta.get("format") != ckpt.FORMAT or meta.get("algorithm") != "linear":
            raise PolicyError(f"linear: checkpoint {where} is format {meta.get('format')!r} "
                              f"algorithm {meta.get('algorithm')!r}, expected "
                              f"{ckpt.FORMAT} 'linear'")
        names = (meta.get("features") or {}).get("names")
        if list(names or []) != list(FEATURE_NAMES):
            raise PolicyError(f"linear: checkpoint {where} was trained on features "
                              f"{names}, this build has {list(FEATURE_NAMES)}")
        nf = len(FEATURE_NAMES)
        try:
            self.w = tensors["w"].astype(np.float64).reshape(nf)
            self.b = float(tensors["b"].reshape(-1)[0])
            self.mean = tensors.get("mean", np.zeros(nf)).astype(np.float64).reshape(nf)
            self.std = tensors.get("std", np.ones(nf)).astype(np.float64).reshape(nf)
        except (KeyError, ValueError, IndexError) as e:
            raise PolicyError(f"linear: checkpoint {where}: bad tensors: {e}") from None
        arrays = (self.w, self.mean, self.std, np.array([self.b]))
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise PolicyError(f"linear: checkpoint {where}: non-finite tensors")
        self.std = np.where(self.std > 0, self.std, 1.0)
        mode = meta.get("mode", "sed")
        if mode not in _MODES:
            raise PolicyError(f"linear: checkpoint {where}: unknown mode {mode!r}")
        self.mode = _MODES[mode]  # type: ignore[misc]
        self.meta = meta

    def act(self, features: Any) -> np.ndarray:
        obs = (observation_matrix(features).astype(np.float64) - self.mean) / self.std
        return np.exp(np.clip(obs @ self.w + self.b, -20.0, 20.0))
