"""Learned-policy checkpoints: ONE file, ``NAME.safetensors``: the tensors, with the
JSON metadata embedded in the safetensors header (``__metadata__["marllb"]``).

One file so that a checkpoint is replaced atomically as a whole (temp file,
fsync, rename: a kill never leaves tensors and metadata of different runs).
``save`` also writes ``NAME.json``, a copy of the metadata for people and
tools; ``load`` uses the embedded metadata when present and reads the
sidecar only for old-style pairs (the shipped checkpoints, older runs).
Files are written 0640 (an lbd in the service group can read them).

Loading never unpickles and never reads a file blindly: the 8-byte header
length and the JSON header are read first and checked (dtypes, shapes, offsets,
total size against MAX_BYTES), then each tensor is read from its offsets; a
tensor with a non-finite value is refused, naming it.

``validate`` checks the metadata against what the daemon will feed the network
(algorithm, feature names and spec, action levels, dimensions; tensor shapes
that fit together) and ``check_servers`` against the region's server count; both raise
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
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from marllb.daemon.features import FEATURE_NAMES
from marllb.daemon.fsutil import atomic_file, atomic_write_json
from marllb.daemon.nets import FEATURE_SPEC, PARAM_SHAPES, input_dim

FORMAT = 1
# a served network is ~100 KiB; anything near this is not a policy checkpoint
MAX_BYTES = 64 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_META_BYTES = 1 << 20
FILE_MODE = 0o640
META_KEY = "marllb"
# safetensors dtype -> little-endian numpy dtype (what a policy can be made of)
DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
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
    """Write the checkpoint atomically (0640); returns the ``.safetensors`` path.

    Raises fsutil.OutputError (disk full, permissions): the previous file is intact."""
    from safetensors.numpy import save_file

    tp, mp = paths(path)
    tp.parent.mkdir(parents=True, exist_ok=True)
    m = dict(meta)
    m.setdefault("format", FORMAT)
    m.setdefault("code_version", code_version())
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    with atomic_file(tp, mode=FILE_MODE) as tmp:
        save_file(arrays, str(tmp), metadata={META_KEY: json.dumps(m)})
    atomic_write_json(mp, m, mode=FILE_MODE, indent=1)   # a readable copy; not authoritative
    return tp


def _header(f: Any, where: Path) -> tuple[dict[str, Any], dict[str, str] | None, int]:
    """Read and check the safetensors header of open file ``f``.

    (tensor entries, __metadata__ or None, offset of the data section)."""
    size = os.fstat(f.fileno()).st_size
    pre = f"checkpoint {where}: unreadable tensors: "
    if size > MAX_BYTES:
        raise CheckpointError(f"checkpoint {where}: {size} bytes, over the "
                              f"{MAX_BYTES >> 20} MiB limit for a policy checkpoint")
    raw = f.read(8)
    if len(raw) < 8:
        raise CheckpointError(f"{pre}truncated ({size} bytes)")
    (hlen,) = struct.unpack("<Q", raw)
    if not 2 <= hlen <= min(MAX_HEADER_BYTES, size - 8):
        raise CheckpointError(f"{pre}header length {hlen} is impossible "
                              f"for a {size}-byte file (not safetensors, or truncated)")
    try:
        header = json.loads(f.read(hlen).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{pre}bad header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{pre}header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise CheckpointError(f"{pre}__metadata__ must map strings to strings")
    data = size - 8 - hlen
    end_max = 0
    for name, info in header.items():
        ok = isinstance(info, dict) and info.get("dtype") in DTYPES
        shape = info.get("shape") if ok else None
        offs = info.get("data_offsets") if ok else None
        ok = ok and isinstance(shape, list) and len(shape) <= 4 and all(
            isinstance(d, int) and d >= 0 for d in shape)
        ok = ok and isinstance(offs, list) and len(offs) == 2 and all(
            isinstance(o, int) for o in offs) and 0 <= offs[0] <= offs[1] <= data
        if not ok:
            raise CheckpointError(f"{pre}{name!r}: bad header entry "
                                  f"{info!r} (dtype F16/F32/F64, shape, offsets in the file)")
        need = math.prod(shape) * DTYPES[info["dtype"]].itemsize
        if offs[1] - offs[0] != need:
            raise CheckpointError(f"checkpoint {where}: tensor {name!r}: shape {shape} needs "
                                  f"{need} bytes, offsets give {offs[1] - offs[0]}")
        end_max = max(end_max, offs[1])
    if end_max != data:
        raise CheckpointError(f"{pre}they cover {end_max} of the "
                              f"{data} data bytes (truncated or padded file)")
    return header, meta, 8 + hlen


def _read_tensors(f: Any, header: dict[str, Any], start: int,
                  where: Path) -> dict[str, np.ndarray]:
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        f.seek(start + a)
        buf = f.read(b - a)
        if len(buf) != b - a:
            raise CheckpointError(f"checkpoint {where}: tensor {name!r} is truncated")
        arr = np.frombuffer(buf, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"checkpoint {where}: tensor {name!r} has non-finite "
                                  "values (NaN or Inf)")
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    return out


def _read_meta_file(mp: Path) -> dict[str, Any]:
    if not mp.is_file():
        raise CheckpointError(f"checkpoint {mp}: no such file (and no metadata embedded "
                              "in the tensors file)")
    try:
        with mp.open("rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_META_BYTES:
                raise CheckpointError(f"checkpoint {mp}: metadata over "
                                      f"{MAX_META_BYTES >> 20} MiB")
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {mp}: unreadable JSON metadata: {e}") from None


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, metadata); CheckpointError naming the file (and tensor) on any problem."""
    tp, mp = paths(path)
    if not tp.is_file():
        raise CheckpointError(f"checkpoint {tp}: no such file")
    try:
        with tp.open("rb") as f:
            header, embedded, start = _header(f, tp)
            if embedded is not None and META_KEY in embedded:
                try:
                    meta = json.loads(embedded[META_KEY])
                except (ValueError, RecursionError) as e:
                    raise CheckpointError(f"checkpoint {tp}: unreadable embedded metadata: "
                                          f"{e}") from None
            else:
                meta = _read_meta_file(mp)    # an old-style pair
            if not isinstance(meta, dict):
                raise CheckpointError(f"checkpoint {tp}: metadata is not a JSON object")
            tensors = _read_tensors(f, header, start, tp)
    except OSError as e:
        raise CheckpointError(f"checkpoint {tp}: unreadable: {e.strerror or e}") from None
    return tensors, meta


def _check_shapes(tensors: dict[str, np.ndarray], where: str) -> None:
    """The agent's tensors must fit together (fc1 -> GRU -> head); name the one that does not."""
    shp = {k: tuple(tensors[k].shape) for k in PARAM_SHAPES}

    def bad(name: str, want: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {where}: tensor {name!r} has shape "
                               f"{list(shp[name])}, expected {want}")

    if len(shp["fc1.weight"]) != 2:
        raise bad("fc1.weight", "[embed, inputs]")
    if len(shp["gru.weight_hh"]) != 2 or shp["gru.weight_hh"][0] != 3 * shp["gru.weight_hh"][1]:
        raise bad("gru.weight_hh", "[3*hidden, hidden]")
    e = shp["fc1.weight"][0]
    h = shp["gru.weight_hh"][1]
    if len(shp["head.weight"]) != 2 or shp["head.weight"][1] != h:
        raise bad("head.weight", f"[levels, {h}]")
    n_out = shp["head.weight"][0]
    want = {"fc1.bias": (e,), "gru.weight_ih": (3 * h, e), "gru.bias_ih": (3 * h,),
            "gru.bias_hh": (3 * h,), "head.bias": (n_out,)}
    for name, w in want.items():
        if shp[name] != w:
            raise bad(name, list(w))


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
    _check_shapes(tensors, where)
    for name, t in tensors.items():
        if not np.all(np.isfinite(t)):
            raise CheckpointError(f"checkpoint {where}: tensor {name!r} has non-finite "
                                  "values (NaN or Inf)")
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
