"""Operator/user experience: help texts, paths, a torch-free install, unwritable outputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.test_daemon import ROOT

NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def _py(code: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **env})


def _mod(mod: str, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", mod, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **env})


# -- packaging: the VPP host install has no torch -------------------------------------------

def test_base_install_pulls_no_torch():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("torch") for d in meta["dependencies"])
    assert any(d.startswith("torch==") for d in meta["optional-dependencies"]["train"])


def test_every_subpackage_is_in_the_wheel():
    """A non-editable `pip install .` once shipped without marllb.daemon.policies
    (lbd could not start); every package directory must be listed."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for top, name in (("daemon", "marllb.daemon"), ("sim", "marllb.sim")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in rel:
                assert ".".join((name, *rel)) in listed, init


def test_lbd_serves_qmix_without_torch():
    r = _py(NO_TORCH + """
import numpy as np
import marllb.daemon.lbd, marllb.daemon.loop, marllb.daemon.lbctl, marllb.daemon.metrics
from marllb.daemon.tick import PolicySlot
slot = PolicySlot.build_strict("qmix", None, "sed")
assert slot.policy is not None and slot.load_error is None
assert sys.modules.get("torch") is None
print("ok", type(slot.policy).__name__)
""")
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def test_lbsim_without_torch_one_line_for_train_others_work(tmp_path):
    r = _py(NO_TORCH + "from marllb.sim.cli import main\n"
            "sys.exit(main(['train', '--algo', 'qmix', '--scenario', 'small', '--out', 'x']))",
            cwd=tmp_path)
    assert r.returncode == 69, r.stderr
    assert "marllb[train]" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _py(NO_TORCH + "from marllb.sim.cli import main\nsys.exit(main(['--help']))")
    assert r.returncode == 0 and "eval" in r.stdout and "warning" not in r.stderr


# -- help texts ----------------------------------------------------------------------------

def test_lbd_help_shows_defaults_without_self_reference():
    r = _mod("marllb.daemon.lbd", "--help")
    assert r.returncode == 0
    out = r.stdout
    assert "lbd --help" not in out
    for flag, default in (("--tick-ms", "default 250"), ("--policy", "default sed"),
                          ("--region", "default marllb"), ("--metrics", "127.0.0.1:9464"),
                          ("--ttl-ms", "DATA-PLANE")):
        assert flag in out and default in " ".join(out.split()), (flag, default)
    assert "NAME[=CHECKPOINT]" in out and "78" in out


def test_lbd_accepts_name_equals_checkpoint_resolved_from_cwd(tmp_path):
    r = _mod("marllb.daemon.lbd", "--policy", "qmix=my/ckpt", "--check-config", "--socket", "",
             cwd=tmp_path)
    assert r.returncode in (0, 78), r.stderr
    if r.returncode == 0:
        import json

        cfg = json.loads(r.stdout)
        assert cfg["policy"] == "qmix" and cfg["checkpoint"] == str(tmp_path / "my/ckpt")


def test_demo_usage_names_itself():
    r = _mod("marllb.sim.demo", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m marllb.sim.demo")
    assert "marllb-demo " not in r.stdout
    for flag in ("--out", "--checkpoint", "--seeds", "NAME[=CHECKPOINT]"):
        assert flag in r.stdout
    r = _mod("marllb.sim.demo", "--help", MARLLB_DEMO_PROG="bash run.sh demo")
    assert r.stdout.startswith("usage: bash run.sh demo")


def test_run_sh_help_exits_0():
    for arg in ("--help", "help", "-h"):
        r = subprocess.run(["bash", str(ROOT / "run.sh"), arg], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0 and "usage: bash run.sh" in r.stdout, r.stderr
        for cmd in ("demo", "test", "bench"):
            assert cmd in r.stdout
    r = subprocess.run(["bash", str(ROOT / "run.sh"), "nope"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "unknown command 'nope'" in r.stderr


# -- paths -----------------------------------------------------------------------------------

def _fake_venv(tmp_path, line: str):
    """A venv whose python runs one shell ``line`` (recording what run.sh passed) and exits 0."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text(f"#!/bin/sh\n{line}\nexit 0\n")
    fake.chmod(0o755)
    return venv


def test_run_sh_keeps_the_callers_directory_and_arguments(tmp_path):
    """`bash run.sh demo --scenario mysmall.toml` must see mysmall.toml where the user is."""
    log = tmp_path / "called.txt"
    venv = _fake_venv(tmp_path, f'[ "$1" = "-m" ] && [ "$2" = "marllb.sim.demo" ] && '
                      f'{{ pwd > {log}; shift 2; printf "%s\\n" "$@" >> {log}; }}')
    user = tmp_path / "user"
    user.mkdir()
    (user / "mysmall.toml").write_text("")
    r = subprocess.run(["bash", str(ROOT / "run.sh"), "demo", "--scenario", "mysmall.toml",
                        "--out", "here"], capture_output=True, text=True, timeout=60, cwd=user,
                       env={**os.environ, "MARLLB_VENV": str(venv)})
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    assert lines == [str(user), "--scenario", "mysmall.toml", "--out", "here"]


def test_run_sh_bench_group_names_stay_words_in_the_repository(tmp_path):
    """`bash run.sh bench --only sim` from the repository: `sim` is a group, not ./sim."""
    log = tmp_path / "called.txt"
    venv = _fake_venv(tmp_path, f'[ "$1" = "tests/bench/run.py" ] && '
                      f'{{ shift; printf "%s\\n" "$@" > {log}; }}')
    r = subprocess.run(["bash", str(ROOT / "run.sh"), "bench", "--only", "sim"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "MARLLB_VENV": str(venv)})
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["--only", "sim"]


def test_demo_relative_checkpoint_resolves_from_the_callers_dir(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    r = _mod("marllb.sim.demo", "--policy", "qmix=bad", "--duration", "4", cwd=tmp_path)
    assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / "bad") in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_relative_paths_and_a_failed_daemon_shows_its_log(tmp_path, monkeypatch, capsys):
    """Relative --scenario/--out resolve from the caller's directory; a daemon that dies at
    start shows its last log lines, not only an exit code."""
    from marllb.sim import demo

    src = (ROOT / "sim" / "scenarios" / "small.toml").read_text()
    (tmp_path / "mysmall.toml").write_text(src.replace('name = "small"', 'name = "mysmall"'))
    real = demo._tool
    fake_lbd = [sys.executable, "-c", "import sys; print('lbd: config x: tick_ms: boom'); "
                "sys.exit(78)"]
    monkeypatch.setattr(demo, "_tool", lambda n: fake_lbd if n == "lbd" else real(n))
    monkeypatch.chdir(tmp_path)
    rc = demo.main(["--scenario", "mysmall.toml", "--out", "out", "--policy", "sed",
                    "--duration", "4", "--seeds", "1"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "scenario mysmall" in cap.out and (tmp_path / "out" / "lbd-0.log").exists()
    assert "exited with code 78" in cap.err and "tick_ms: boom" in cap.err


def test_eval_refuses_an_unwritable_out_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")   # a file where a directory is needed: no root can write under it
    r = _mod("marllb.sim.cli", "eval", "--scenario", "small", "--policy", "sed",
             "--out", str(blocker / "results"), "--quiet", cwd=tmp_path)
    assert r.returncode == 73, r.stderr
    assert "cannot write there" in r.stderr and "Traceback" not in r.stderr
    assert "flow" not in r.stderr            # refused before any simulation ran


def test_dataplane_mode_takes_a_mode_and_old_names(tmp_path):
    r = _mod("marllb.sim.cli", "dataplane", "--scenario", "small", "--region", "x",
             "--mode", "qmix", cwd=tmp_path)
    assert r.returncode == 2 and "sed, wcmp, lsq, hash" in r.stderr


def test_mode_names_one_spelling_with_old_aliases():
    from marllb.daemon._core import lib
    from marllb.daemon.policies import MODE_IDS, MODE_NAMES

    assert MODE_NAMES[lib.MLB_MODE_WRANDOM] == "wcmp"
    assert MODE_NAMES[lib.MLB_MODE_LEAST_ACTIVE] == "lsq"
    assert {"sed", "wcmp", "lsq", "hash", "p2c"} <= set(MODE_NAMES.values())
    assert MODE_IDS["wrandom"] == lib.MLB_MODE_WRANDOM
    assert MODE_IDS["least_active"] == lib.MLB_MODE_LEAST_ACTIVE
    # the VPP CLI spells them the same
    cli = (ROOT / "vpp_plugin" / "cli.c").read_text()
    m = re.search(r'#define LB_RL_MODES "([a-z0-9|]+)"', cli)
    assert m is not None and set(m.group(1).split("|")) == {"sed", "wcmp", "lsq", "hash", "p2c"}


def test_lbd_socket_failure_names_the_way_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _mod("marllb.daemon.lbd", "--region", "nope-ops", "--socket", str(blocker / "s.sock"),
             "--metrics", "")
    assert r.returncode == 1 and "--socket PATH or LBD_SOCKET" in r.stderr


def test_bad_servers_map_is_one_config_line(tmp_path):
    cfg = tmp_path / "lbd.toml"
    cfg.write_text('[servers]\nweb = "10.0.0.1"\n')
    r = _mod("marllb.daemon.lbd", "--config", str(cfg), "--check-config")
    assert r.returncode == 78 and "servers" in r.stderr and "server ids" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_dataplane_restart_after_a_crash_names_replace(tmp_path):
    from marllb.daemon.shm import Region
    from tests.fakedp import unique_name

    name = unique_name("crash")
    left = Region.create(name, 3, 1, publish_interval_ns=250_000_000)   # a crash's leftover
    try:
        r = _mod("marllb.sim.cli", "dataplane", "--scenario", "small", "--region", name,
                 "--duration", "1", cwd=tmp_path)
        assert r.returncode == 69 and "--replace" in r.stderr and "Traceback" not in r.stderr
    finally:
        left.unlink()
        left.close()
