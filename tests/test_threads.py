"""lbd runs its numeric libraries on one thread (issue 15): the OpenBLAS /
OpenMP pools spin-wait after each small per-tick matmul and would take a
core from packet processing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "lbd.service"
VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def test_lbd_pins_blas_before_numpy_loads() -> None:
    code = (
        "import marllb.daemon.lbd as lbd, os, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        f"print(*[os.environ[v] for v in {VARS!r}])\n"
        "print(max([p['num_threads'] for p in threadpool_info()] or [1]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "8", "OMP_NUM_THREADS": "8"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["1", "1", "1", "1"]


def test_pin_numeric_threads_limits_loaded_pools() -> None:
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from marllb.daemon.lbd import pin_numeric_threads\n"
        "pin_numeric_threads()\n"
        "print(max([p['num_threads'] for p in threadpool_info()] or [1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1"]


def test_unit_sets_one_thread() -> None:
    lines = [ln.strip() for ln in UNIT.read_text().splitlines()]
    for v in VARS:
        assert f"Environment={v}=1" in lines
