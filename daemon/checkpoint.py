"""Learned-policy checkpoints: ``NAME.safetensors`` (tensors) + ``NAME.json`` (metadata).

Loading never unpickles: tensors come from safetensors' numpy reader, metadata
from JSON.  ``validate`` checks the metadata against what the daemon will feed
the network (algorithm, feature names and spec, action levels, dimensions) and
``check_servers`` against the region's server count; both raise
``CheckpointError`` with one line naming the file, the field and the values.

Metadata fields: ``format`` (1), ``algorithm`` (qmix | sac_gru), ``features``
{names, spec, mean, std}, ``levels``, ``hidden``, ``input_dim``,
``n_servers`` (the count it was trained on), ``servers_min``/``servers_max``
(the range it accepts: the network is per-server with shared parameters, so a
checkpoint may allow other counts), ``scenario``, ``code_version``,
``trained`` {seconds, episodes, ...}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon.features import FEATURE_NAMES
from marllb.daemon.nets import FEATURE_SPEC, PARAM_SHAPES, input_dim

FORMAT = 1
ALGORITHMS = ("qmix", "sac_gru")
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names file and field."""


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("marllb")
    except Exception:  # noqa: BLE001 - not installed: still loadable
        return "unknown"


def paths(path: str | Path) -> tuple[Path, Path]:
    """(tensors, metadata) paths for ``X``, ``X.safetensors`` or ``X.json``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def shipped(algorithm: str) -> Path:
    """The default checkpoint of an algorithm, shipped inside the package."""
    return SHIPPED_DIR / f"{algorithm}.safetensors"


def save(path: str | Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    from safetensors.numpy import save_file

    tp, mp = paths(path)
    tp.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(tp))
    m = dict(meta)
    m.setdefault("format", FORMAT)
    m.setdefault("code_version", code_version())
    mp.write_text(json.dumps(m, indent=1) + "\n")
    return tp


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, metadata); CheckpointError naming the file on any problem."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tp, mp = paths(path)
    for p in (tp, mp):
        if not p.is_file():
            raise CheckpointError(f"checkpoint {p}: no such file")
    try:
        meta = json.loads(mp.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {mp}: unreadable JSON metadata: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {mp}: metadata is not a JSON object")
    try:
        tensors = load_file(str(tp))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"checkpoint {tp}: unreadable tensors: {e}") from None
    return tensors, meta


def validate(tensors: dict[str, np.ndarray], meta: dict[str, Any], where: str,
             algorithm: str | None = None) -> None:
    """Check the metadata and tensors describe a network the daemon can feed."""

    def bad(field: str, got: Any, want: Any) -> CheckpointError:
        return CheckpointError(f"checkpoint {where}: {field} is {got!r}, expected {want!r}")

    if meta.get("format") != FORMAT:
        raise bad("format", meta.get("format"), FORMAT)
    algo = meta.get("algorithm")
    if algo not in ALGORITHMS:
        raise bad("algorithm", algo, " or ".join(ALGORITHMS))
    if algorithm is not None and algo != algorithm:
        raise bad("algorithm", algo, algorithm)
    feats = meta.get("features") or {}
    names = feats.get("names")
    if names != list(FEATURE_NAMES):
        raise CheckpointError(
            f"checkpoint {where}: features.names {names!r} do not match this daemon's "
            f"feature set {list(FEATURE_NAMES)!r} (retrain with this version)")
    if feats.get("spec") != FEATURE_SPEC:
        raise bad("features.spec", feats.get("spec"), FEATURE_SPEC)
    for key in ("mean", "std"):
        v = np.asarray(feats.get(key, []), dtype=np.float64)
        if v.shape != (len(FEATURE_NAMES),) or not np.all(np.isfinite(v)):
            raise CheckpointError(f"checkpoint {where}: features.{key} must be "
                                  f"{len(FEATURE_NAMES)} finite numbers")
    if np.any(np.asarray(feats["std"]) <= 0):
        raise CheckpointError(f"checkpoint {where}: features.std must be > 0")
    levels = meta.get("levels")
    if not (isinstance(levels, list) and levels and all(
            isinstance(x, (int, float)) and x > 0 for x in levels)):
        raise bad("levels", levels, "a list of positive numbers")
    missing = [k for k in PARAM_SHAPES if k not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint {where}: tensors missing {', '.join(missing)}")
    want_in = input_dim(len(levels))
    got_in = int(tensors["fc1.weight"].shape[1])
    if got_in != want_in or meta.get("input_dim") != want_in:
        raise bad("input_dim", got_in, want_in)
    if int(tensors["head.weight"].shape[0]) != len(levels):
        raise bad("head outputs", int(tensors["head.weight"].shape[0]), len(levels))
    lo, hi = meta.get("servers_min"), meta.get("servers_max")
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise bad("servers_min/servers_max", (lo, hi), "1 <= min <= max")


def check_servers(meta: dict[str, Any], n_servers: int, where: str) -> None:
    lo, hi = int(meta["servers_min"]), int(meta["servers_max"])
    if not lo <= n_servers <= hi:
        rng = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise CheckpointError(
            f"checkpoint {where}: trained for {rng} servers (n_servers="
            f"{meta.get('n_servers')}), the region has {n_servers}")
