"""Checkpoint files for learned policies: tensors + JSON metadata, no pickle.

A checkpoint is one ``.safetensors`` file (or a directory holding
``policy.safetensors``) whose string metadata has a ``"marllb"`` entry: a JSON
object with at least ``algorithm``, ``feature_names`` and ``version``.  Loading
reads plain arrays with safetensors and parses JSON: never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from marllb.daemon.policies.base import PolicyError

FORMAT_VERSION = 1


def checkpoint_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "policy.safetensors" if p.is_dir() else p


def load_checkpoint(path: str | Path | None, algorithm: str) -> tuple[dict[str, np.ndarray],
                                                                      dict[str, Any]]:
    """(tensors as float arrays, metadata); PolicyError naming the file and problem."""
    if not path:
        raise PolicyError(f"{algorithm}: no checkpoint configured")
    f = checkpoint_file(path)
    if not f.exists():
        raise PolicyError(f"{algorithm}: checkpoint {f} not found")
    try:
        from safetensors import safe_open

        with safe_open(str(f), framework="numpy") as fh:
            meta_raw = (fh.metadata() or {}).get("marllb")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except PolicyError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt files raise many things
        raise PolicyError(f"{algorithm}: checkpoint {f} is corrupt: {e}") from None
    if meta_raw is None:
        raise PolicyError(f"{algorithm}: checkpoint {f} has no 'marllb' metadata")
    try:
        meta = json.loads(meta_raw)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise PolicyError(f"{algorithm}: checkpoint {f}: bad metadata JSON: {e}") from None
    if meta.get("algorithm") != algorithm:
        raise PolicyError(f"{algorithm}: checkpoint {f} is for algorithm "
                          f"{meta.get('algorithm')!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise PolicyError(f"{algorithm}: checkpoint {f} has format version "
                          f"{meta.get('version')!r}, this build reads {FORMAT_VERSION}")
    for k, v in tensors.items():
        if not np.all(np.isfinite(v)):
            raise PolicyError(f"{algorithm}: checkpoint {f}: tensor {k!r} is not finite")
    return tensors, meta


def save_checkpoint(path: str | Path, tensors: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> Path:
    """Write a checkpoint (used by trainers and tests)."""
    from safetensors.numpy import save_file

    f = checkpoint_file(path)
    f.parent.mkdir(parents=True, exist_ok=True)
    full = {"version": FORMAT_VERSION, **meta}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(f),
              metadata={"marllb": json.dumps(full)})
    return f
