"""Fault suite: `kill -9` of `lbsim eval` and `lbsim train` at random moments
(defect 5).  After every kill each output is complete (parses, loads) and is
either the previous good one or the new one, never a partial or torn file; a
killed training run resumes from its last saved state."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marllb.daemon import checkpoint as ckpt
from marllb.daemon.fsutil import existing_dir

ROOT = Path(__file__).resolve().parent.parent
EVAL_TRIALS = 17
TRAIN_TRIALS = 3
pytestmark = pytest.mark.timeout(300)


def lbsim(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "marllb.sim.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def kill_after(p: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``p`` after ``delay`` s; True if it was still running."""
    try:
        p.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def visible(d: Path) -> set[str]:
    return {x.name for x in d.iterdir() if not x.name.startswith(".")}


def eval_args(out: Path, policy: str) -> list[str]:
    return ["eval", "--scenario", "small", "--duration", "20", "--policy", policy,
            "--no-plots", "--quiet", "--out", str(out)]


def check_eval(out: Path) -> str:
    """All three report files complete and from one run; returns its policy."""
    assert visible(out) == {"summary.json", "summary.md", "details.json"}, visible(out)
    summary = json.loads((out / "summary.json").read_text())
    details = json.loads((out / "details.json").read_text())
    md = (out / "summary.md").read_text()
    (pol,) = summary["policies"]
    assert set(details["policies"]) <= {"sed", "lsq"} and md.rstrip().endswith("|"), md
    return pol


def test_kill_9_of_lbsim_eval_never_leaves_a_partial_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    t0 = time.monotonic()
    p = lbsim(*eval_args(out, "sed"))
    assert p.wait(120) == 0, p.stderr.read()
    full = time.monotonic() - t0
    assert check_eval(out) == "sed"
    rng = random.Random(2026)
    killed = 0
    for i in range(EVAL_TRIALS):
        pol = ("lsq", "sed")[i % 2]
        before = check_eval(out)
        p = lbsim(*eval_args(out, pol))
        killed += kill_after(p, rng.uniform(0.2, 1.2) * full)
        after = check_eval(out)
        assert after in (before, pol)
    assert killed >= EVAL_TRIALS // 2, f"only {killed} runs were killed before they ended"


def check_train(out: Path) -> int:
    """Outputs complete and consistent; returns the saved state's episode (0: none)."""
    names = visible(out)
    if "best.safetensors" in names:
        tensors, meta = ckpt.load(out / "best")
        ckpt.validate(tensors, meta, str(out / "best"), algorithm="qmix")
        assert meta["trained"]["episodes"] >= 1          # never the untrained network
        assert "lbsim train" in meta["command"]
    if "log.csv" in names:
        rows = list(csv.reader((out / "log.csv").open()))
        assert rows[0][0] == "episode" and all(len(r) == len(rows[0]) for r in rows)
        assert [int(r[0]) for r in rows[1:]] == list(range(1, len(rows)))
    if "eval.json" in names:
        json.loads((out / "eval.json").read_text())
    state = existing_dir(out / "state")
    if state is None:
        return 0
    prog = json.loads((state / "progress.json").read_text())
    assert (state / "learner.pt").stat().st_size > 0
    assert len(prog["rows"]) == prog["ep_i"]
    return int(prog["ep_i"])


def _state_newer_than(out: Path, t: float) -> bool:
    d = existing_dir(out / "state")
    try:
        return d is not None and (d / "progress.json").stat().st_mtime > t
    except OSError:
        return False


def test_kill_9_of_lbsim_train_leaves_a_consistent_resumable_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rng = random.Random(7)
    args = ["train", "--algo", "qmix", "--scenario", "small", "--duration", "3",
            "--episodes", "400", "--eval-every", "1", "--eval-seeds", "1",
            "--state-every", "0.005", "--quiet"]
    saved = 0
    for i in range(TRAIN_TRIALS):
        cmd = [*args, "--out", str(out)] if saved == 0 else \
            ["train", "--resume", str(out), "--state-every", "0.005", "--quiet"]
        t_start = time.time()
        p = lbsim(*cmd)
        # start-up (torch import) takes seconds on a loaded machine: kill at a random
        # moment once it is training, i.e. writing log rows and state
        deadline = time.monotonic() + 150
        while not _state_newer_than(out, t_start) and time.monotonic() < deadline \
                and p.poll() is None:
            time.sleep(0.05)
        assert kill_after(p, rng.uniform(0.0, 2.5)), p.stderr.read()
        now = check_train(out)
        assert now >= saved, (i, now, saved)          # progress never goes back
        saved = now
    assert saved > 0, "no state was ever saved"
    # and a killed run resumes and finishes
    p = lbsim("train", "--resume", str(out), "--episodes", str(saved + 2), "--quiet")
    assert p.wait(180) == 0, p.stderr.read()
    assert check_train(out) == saved + 2
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == saved + 2 and not summary["interrupted"]
