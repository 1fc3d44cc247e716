"""Every C file of the portable core (csrc/) and the data-plane core
(vpp_plugin/core/) compiles warning-free as strict C11, so warnings fail CI
instead of scrolling past in a build log."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
C_FILES = sorted([*(ROOT / "csrc").glob("*.c"), *(ROOT / "vpp_plugin" / "core").glob("*.c")])
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-c"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def test_there_are_c_files() -> None:
    assert any(p.parent.name == "csrc" for p in C_FILES)
    assert any(p.parent.name == "core" for p in C_FILES)


@pytest.mark.parametrize("src", C_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_without_warnings(src: Path, tmp_path: Path) -> None:
    cmd = ["gcc", *FLAGS, f"-I{ROOT}", str(src), "-o", str(tmp_path / (src.stem + ".o"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
