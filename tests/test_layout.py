"""The Python view (cffi) and the C compiler agree on every sizeof/offsetof.

A C program generated from cffi's own type information prints what gcc
lays out; every struct and every field is compared."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from marllb.daemon._core import ffi, lib

ROOT = Path(__file__).resolve().parent.parent
STRUCTS = [
    "mlb_sample_t", "mlb_reservoir_t", "mlb_server_stats_t", "mlb_out_meta_t",
    "mlb_msg_out_t", "mlb_msg_in_t", "mlb_header_t", "mlb_region_t",
]


def _python_layout() -> list[tuple[str, str, int]]:
    rows = []
    for s in STRUCTS:
        rows.append((s, "sizeof", ffi.sizeof(s)))
        rows.append((s, "alignof", ffi.alignof(s)))
        for field, _ in ffi.typeof(s).fields:
            rows.append((s, field, ffi.offsetof(s, field)))
    return rows


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_c_and_python_agree_on_every_size_and_offset(tmp_path: Path) -> None:
    rows = _python_layout()
    lines = ['#include <stdio.h>', '#include "shm_layout/mlb_abi.h"', "int main(void) {"]
    for s, field, _ in rows:
        if field == "sizeof":
            expr = f"sizeof({s})"
        elif field == "alignof":
            expr = f"_Alignof({s})"
        else:
            expr = f"offsetof({s}, {field})"
        lines.append(f'printf("%zu\\n", (size_t)({expr}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT),
                    str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    c_values = [int(x) for x in out]
    assert len(c_values) == len(rows)
    mismatches = [(s, f, py, c) for (s, f, py), c in zip(rows, c_values, strict=True) if py != c]
    assert mismatches == []
    assert len(rows) > 80  # every field of every struct was compared


def test_every_u64_field_is_naturally_aligned() -> None:
    for s in STRUCTS:
        for field, f in ffi.typeof(s).fields:
            if f.type.kind == "primitive" and ffi.sizeof(f.type) == 8:
                assert ffi.offsetof(s, field) % 8 == 0, (s, field)


def test_header_describes_itself_after_init() -> None:
    r = ffi.new("mlb_region_t *")
    assert lib.mlb_region_init(r, lib.mlb_region_size(), 8, 2, 42, 10**8, b"vip", 1) == lib.MLB_OK
    h = r.hdr
    assert h.magic == lib.MLB_MAGIC and h.abi_version == lib.MLB_ABI_VERSION
    assert h.region_size == ffi.sizeof("mlb_region_t")
    assert h.off_msg_out == ffi.offsetof("mlb_region_t", "out")
    assert h.off_msg_in == ffi.offsetof("mlb_region_t", "in")
    assert h.sizeof_msg_out == ffi.sizeof("mlb_msg_out_t")
    assert (h.max_servers, h.max_workers, h.reservoir_k) == (256, 16, 128)
    assert (h.n_servers, h.n_workers, h.dp_generation) == (8, 2, 42)
    assert lib.mlb_region_validate(r, lib.mlb_region_size()) == lib.MLB_OK
    # bad arguments are refused, not written
    assert lib.mlb_region_init(r, lib.mlb_region_size(), 0, 2, 1, 1, b"x", 1) == lib.MLB_ERR_ARG
    assert lib.mlb_region_init(r, lib.mlb_region_size(), 257, 2, 1, 1, b"x", 1) == lib.MLB_ERR_ARG
    assert lib.mlb_region_init(r, 100, 8, 2, 1, 1, b"x", 1) == lib.MLB_ERR_SHORT
