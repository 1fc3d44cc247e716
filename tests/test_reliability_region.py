"""Defect 1 (a shrunk region killed both sides with SIGBUS) and the region-name
rules of defect 3 ('.', '..', NUL, extra slashes).

The shrink checks run in a child process: on a build without the size checks
the child dies of SIGBUS, which fails the test instead of killing pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from marllb.daemon import shm
from marllb.daemon.attach import Attacher
from marllb.daemon.config import ConfigError, load_config
from tests.fakedp import FakeDataPlane, unique_name

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import os, sys
    from marllb.daemon import shm
    from marllb.daemon._core import ffi
    from marllb.daemon.attach import Attacher
    name = sys.argv[1]
    owner = shm.Region.create(name, 4, 1, replace=True)
    with owner.write_out() as f:
        f.meta.frame_no = 1
    att = Attacher(name)
    assert att.try_attach() is None
    os.truncate("/dev/shm/" + name, 4096)            # anything that can write it
    out = []
    for label, fn in (
        ("daemon snapshot", lambda: att.region.snapshot_view(
            ffi.new("mlb_out_view_t *"), ffi.new("mlb_rng_t *"))),
        ("daemon publish", lambda: att.region.write_in().__enter__()),
        ("daemon generation", lambda: att.region.generation),
        ("owner publish", lambda: owner.write_out().__enter__()),
        ("owner heartbeat", lambda: owner.heartbeat(5)),
    ):
        try:
            fn()
            out.append(label + ": no error")
        except shm.RegionShrunk as e:
            out.append(label + ": shrunk: " + str(e))
    out.append("check: " + str(att.check()))
    att.detach()
    out.append("reattach: " + str(Attacher(name).try_attach()))
    owner.close()
    shm.unlink(name)
    print("\\n".join(out))
""")


def test_shrunk_region_is_an_error_not_sigbus() -> None:
    name = unique_name("shrink")
    r = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    shm.unlink(name)
    assert r.returncode == 0, f"child died (rc {r.returncode}: -7 is SIGBUS)\n{r.stderr}"
    lines = r.stdout.splitlines()
    for label in ("daemon snapshot", "daemon publish", "daemon generation", "owner publish",
                  "owner heartbeat"):
        assert any(x.startswith(f"{label}: shrunk: region /{name} shrank to 4096 bytes")
                   for x in lines), r.stdout
    assert any(x.startswith("check: region") and "shrank" in x for x in lines), r.stdout
    assert any(x.startswith("reattach: region") and "shorter" in x for x in lines), r.stdout


def test_attacher_recovers_when_region_is_recreated() -> None:
    name = unique_name("recreate")
    dp = FakeDataPlane.create(name, 2)
    att = Attacher(name)
    try:
        assert att.try_attach() is None
        gen = att.current.generation
        dp.region.close()
        with open(f"/dev/shm/{name}", "r+b") as fh:
            fh.truncate(100)
        assert "shrank" in (att.check() or "")
        att.detach()
        assert att.try_attach() is not None            # still too short: waits, no crash
        dp = FakeDataPlane.create(name, 2, replace=True)
        assert att.try_attach() is None
        assert att.current.generation != gen and att.check() is None
    finally:
        att.detach()
        dp.close()


@pytest.mark.parametrize("bad", [".", "..", "/..", "a\0b", "//x", "a/b", "", "/",
                                 "x" * 300])
def test_invalid_region_names_refused(bad: str) -> None:
    assert shm.name_problem(bad) is not None
    with pytest.raises(shm.RegionError, match="invalid region name"):
        shm.shm_name(bad)
    with pytest.raises(ConfigError, match="region"):
        load_config(None, {"region": bad})


@pytest.mark.parametrize("good", ["vip0", "/vip0", "a.b-c_d", "x" * 50])
def test_valid_region_names(good: str) -> None:
    assert shm.name_problem(good) is None
    assert shm.shm_name(good) == "/" + good.lstrip("/")
    assert load_config(None, {"region": good}).region == good
