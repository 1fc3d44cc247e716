"""Defect 5 (outputs written in place; disk full = traceback + partial output)
and the `lbsim train` points of issue 14: an honest progress bar, "best" only
among trained evaluations, the real command recorded, Ctrl-C leaving a
consistent folder that says how to resume.

A full disk is simulated with RLIMIT_FSIZE in the child (writes past the
limit fail with EFBIG, like ENOSPC, and need no root or tmpfs)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from marllb.daemon import checkpoint as ckpt
from marllb.sim import cli

ROOT = Path(__file__).resolve().parent.parent


def _small_files(limit: int):  # noqa: ANN202
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_eval_disk_full_is_one_line_and_keeps_the_old_report(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = [sys.executable, "-m", "marllb.sim.cli", "eval", "--scenario", "small",
            "--duration", "5", "--no-plots", "--quiet", "--out", str(out)]
    r = subprocess.run([*args, "--policy", "sed"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    r = subprocess.run([*args, "--policy", "lsq", "--policy", "wcmp"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, preexec_fn=_small_files(600))
    assert r.returncode == 74, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write" in lines[0] and "previous outputs" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old   # no temp file left


def test_dataplane_summary_is_atomic(tmp_path: Path, monkeypatch) -> None:
    from marllb.daemon.fsutil import OutputError
    from marllb.sim.realtime import write_summary

    p = tmp_path / "dp.json"
    write_summary(p, {"a": 1})
    import marllb.daemon.fsutil as fs

    real = fs.os.replace

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fs.os, "replace", boom)
    with pytest.raises(OutputError, match="No space left"):
        write_summary(p, {"a": 2})
    monkeypatch.setattr(fs.os, "replace", real)
    assert json.loads(p.read_text()) == {"a": 1} and [x.name for x in tmp_path.iterdir()] == [
        "dp.json"]


TRAIN = ["train", "--algo", "qmix", "--scenario", "small", "--duration", "2",
         "--eval-seeds", "1", "--eval-every", "1e9"]


def test_train_best_is_trained_and_records_the_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = [*TRAIN, "--episodes", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    # the bar counts the 2 episodes given, not the 10-minute default
    assert "/2 [" in err and "ep" in err and "/600" not in err, err[-500:]
    _, meta = ckpt.load(out / "best")
    assert meta["trained"]["episodes"] == 2            # never the untrained episode 0
    assert meta["command"] == "lbsim " + " ".join(argv)
    side = json.loads((out / "best.json").read_text())
    assert side["command"] == meta["command"]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["evals"][0]["untrained"] is True and ev["best_episode"] == 2
    assert (out / "curve.png").stat().st_size > 0 and (out / "state").is_dir()


def test_train_ctrl_c_leaves_a_consistent_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    from marllb.sim import marl_env

    out = tmp_path / "run"
    real = marl_env.MarlEnv.rollout
    calls = {"n": 0}

    def rollout(self, act_fn, seed, record=True):  # noqa: ANN001, ANN202
        if record:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real(self, act_fn, seed, record)

    monkeypatch.setattr(marl_env.MarlEnv, "rollout", rollout)
    assert cli.main([*TRAIN, "--episodes", "50", "--quiet", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "consistent" in err and f"--resume {out}" in err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["interrupted"] is True and ev["episodes"] == 2
    prog = json.loads((out / "state" / "progress.json").read_text())
    assert prog["ep_i"] == 2 and len(prog["rows"]) == 2
    assert (out / "log.csv").read_text().count("\n") == 3
    tensors, meta = ckpt.load(out / "last")
    assert meta["trained"]["episodes"] == 2 and all(np.isfinite(t).all()
                                                    for t in tensors.values())


def test_train_disk_full_is_one_line_and_keeps_the_old_best(tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    out = tmp_path / "run"
    out.mkdir()
    t, m = ckpt.load(ckpt.shipped("qmix"))
    ckpt.save(out / "best", t, {**m, "note": "previous good"})
    before = (out / "best.safetensors").read_bytes()
    import safetensors.numpy as stn

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stn, "save_file", full)
    assert cli.main([*TRAIN, "--episodes", "1", "--quiet", "--out", str(out)]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert (out / "best.safetensors").read_bytes() == before
    assert not [x for x in out.iterdir() if x.name.startswith(".")]


def test_resume_without_state_is_one_line(tmp_path: Path, capsys) -> None:
    assert cli.main(["train", "--resume", str(tmp_path)]) == 66
    err = capsys.readouterr().err
    assert "no saved state" in err and "Traceback" not in err
