"""Defects 5 and 6: checkpoints.  The header is checked before any tensor is read
(a huge file is refused from its size alone), non-finite and mis-shaped
tensors are refused at load naming the tensor, the file is 0640, and the
metadata travels inside the one tensors file (a pair cannot be torn)."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest

from marllb.daemon import checkpoint as ckpt
from marllb.daemon.fsutil import OutputError
from marllb.daemon.policies import PolicyError, make_policy


@pytest.fixture
def shipped() -> tuple[dict[str, np.ndarray], dict]:
    return ckpt.load(ckpt.shipped("qmix_v1"))        # an old-style pair still loads


def test_huge_file_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "huge.safetensors"
    with p.open("wb") as f:
        f.write(struct.pack("<Q", 64) + b"{" + b" " * 63)
        f.truncate(1_500_000_000)                   # sparse: costs no disk
    with pytest.raises(ckpt.CheckpointError, match=r"huge.safetensors: 1500000000 bytes, over"):
        ckpt.load(p)


@pytest.mark.parametrize(("header", "says"), [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, "needs 16 bytes"),
    ({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, "bad header entry"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, "bad header entry"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}, "bad header entry"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "cover 4 of the 8"),
    ({"__metadata__": {"a": 1}}, "__metadata__"),
])
def test_bad_headers_named(tmp_path: Path, header: dict, says: str) -> None:
    h = json.dumps(header).encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 8)
    with pytest.raises(ckpt.CheckpointError, match=says):
        ckpt.load(p)


def test_non_finite_tensor_refused_naming_it(tmp_path: Path, shipped) -> None:
    tensors, meta = shipped
    for bad in (np.nan, np.inf):
        t = dict(tensors)
        t["gru.bias_hh"] = t["gru.bias_hh"].copy()
        t["gru.bias_hh"][3] = bad
        p = ckpt.save(tmp_path / "nan", t, meta)
        with pytest.raises(ckpt.CheckpointError, match="tensor 'gru.bias_hh' has non-finite"):
            ckpt.load(p)
        with pytest.raises(PolicyError, match="gru.bias_hh"):
            make_policy("qmix_v1", checkpoint=str(p))


def test_mis_shaped_tensor_refused_naming_it(tmp_path: Path, shipped) -> None:
    tensors, meta = shipped
    t = dict(tensors)
    t["gru.bias_ih"] = t["gru.bias_ih"][:-1]
    p = ckpt.save(tmp_path / "shape", t, meta)
    with pytest.raises(PolicyError, match=r"tensor 'gru.bias_ih' has shape \[191\]"):
        make_policy("qmix_v1", checkpoint=str(p))


def test_one_file_0640_with_embedded_metadata(tmp_path: Path, shipped) -> None:
    tensors, meta = shipped
    old = os.umask(0o077)
    try:
        p = ckpt.save(tmp_path / "one", tensors, {**meta, "note": "one file"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "one.json").stat().st_mode) == 0o640
    (tmp_path / "one.json").unlink()                 # the sidecar is only a copy
    t2, m2 = ckpt.load(p)
    assert m2["note"] == "one file" and set(t2) == set(tensors)
    make_policy("qmix_v1", checkpoint=str(p))
    # a stale sidecar (a kill between the two renames) does not matter
    (tmp_path / "one.json").write_text(json.dumps({**meta, "note": "stale"}))
    assert ckpt.load(p)[1]["note"] == "one file"


def test_save_failure_keeps_the_previous_checkpoint(tmp_path: Path, shipped, monkeypatch
                                                    ) -> None:
    tensors, meta = shipped
    p = ckpt.save(tmp_path / "best", tensors, {**meta, "note": "good"})
    before = p.read_bytes()
    import safetensors.numpy as stn

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stn, "save_file", full)
    with pytest.raises(OutputError, match="No space left on device"):
        ckpt.save(tmp_path / "best", tensors, {**meta, "note": "new"})
    assert p.read_bytes() == before and ckpt.load(p)[1]["note"] == "good"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
