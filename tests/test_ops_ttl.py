"""The TTL story: weights stay in force when the data-plane clock runs faster
than the wall clock, and the READMEs' by-hand commands show it."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marllb.daemon.config import load_config
from marllb.daemon.control import ControlError, request
from marllb.daemon.ttl import PROVISIONAL_MIN_NS, DpClock, TtlSpec
from tests.fakedp import unique_name
from tests.test_daemon import ROOT, wait_for

MS = 1_000_000


def test_dp_clock_rate_and_auto_ttl():
    c = DpClock()
    tick = 100 * MS
    spec = TtlSpec(4 * tick, tick_ns=tick)
    # nothing seen yet: provisional, generous enough for a fast clock's first publish
    assert c.resolve(spec) == PROVISIONAL_MIN_NS
    # a data plane 4x faster than the wall clock, one frame per 250 ms of its time
    for k in range(40):
        c.observe(7, 1_000 * MS + k * 250 * MS, k * 62_500_000)
    assert c.rate == pytest.approx(4.0)
    assert c.frame_interval_ns == 250 * MS
    ttl = c.resolve(spec)
    # in force across a tick (400 ms of dp time) + a stale frame + a dp timer, with margin
    assert ttl >= 2 * (250 * MS + 400 * MS) and ttl == pytest.approx(1600 * MS)
    c.observe(8, 5 * MS, 10**10)                 # a new data-plane generation: start over
    assert c.rate is None


def test_explicit_ttl_is_data_plane_time_as_given():
    cfg = load_config(None, {"ttl_ms": 750.0, "tick_ms": 100.0})
    assert not cfg.ttl_ns.auto and cfg.ttl_ns == 750 * MS
    c = DpClock()
    for k in range(10):
        c.observe(1, k * 400 * MS, k * 100 * MS)
    assert c.resolve(cfg.ttl_ns) == 750 * MS     # never rescaled
    auto = load_config(None, {"tick_ms": 100.0}).ttl_ns
    assert auto.auto and auto.tick_ns == 100 * MS


def _readme_command(readme: str, prefix: str) -> list[str]:
    text = (ROOT / readme).read_text()
    for line in text.splitlines():
        if line.startswith(prefix):
            return shlex.split(line.split("#")[0])
    raise AssertionError(f"{readme}: no line starting with {prefix!r}")


def _as_module(argv: list[str]) -> list[str]:
    mod = {"lbsim": "marllb.sim.cli", "lbd": "marllb.daemon.lbd"}[argv[0]]
    return [sys.executable, "-m", mod, *argv[1:]]


def _swap(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[: i + 1] + [value] + argv[i + 2:]


@pytest.mark.slow
def test_readme_by_hand_commands_keep_the_daemons_weights_in_force(tmp_path: Path):
    """sim/README's `lbsim dataplane ... --speed 4` + daemon/README's `lbd ... --tick-ms 100`
    (only the region, socket and ports made unique, and a shorter run)."""
    dp_cmd = _readme_command("sim/README.md", "lbsim dataplane --scenario")
    lbd_cmd = _readme_command("daemon/README.md", "lbd --region")
    assert "--speed" in dp_cmd and "--tick-ms" in lbd_cmd
    region = unique_name("readme")
    sock = str(tmp_path / "lbd.sock")
    dp_cmd = _swap(dp_cmd, "--region", region) + ["--duration", "40"]
    lbd_cmd = _swap(_swap(_swap(lbd_cmd, "--region", region), "--socket", sock),
                    "--metrics", "127.0.0.1:0")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    dp = subprocess.Popen(_as_module(dp_cmd), cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dp.log", "w"))
    lbd = None
    try:
        wait_for(lambda: Path(f"/dev/shm/{region}").exists() or dp.poll() is not None,
                 20, what="data plane region")
        assert dp.poll() is None, (tmp_path / "dp.log").read_text()
        lbd = subprocess.Popen(_as_module(lbd_cmd), cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "lbd.log", "w"))

        def status() -> dict | None:
            try:
                return request(sock, {"cmd": "status"}, timeout=2)["result"]
            except (ControlError, OSError, KeyError):
                return None

        wait_for(lambda: (s := status()) and s.get("dp") and s["dp"]["msg_in_accepted"] > 3,
                 20, what="weights accepted")
        first = status()["dp"]
        samples = []
        end = time.monotonic() + 4.0               # 16 s of data-plane time
        while time.monotonic() < end and dp.poll() is None:
            st = status()
            if st and st.get("dp"):
                samples.append(st["dp"])
            time.sleep(0.2)
        assert len(samples) >= 10
        in_force = sum(s["weights_source"] == 1 for s in samples) / len(samples)
        assert in_force >= 0.95, f"daemon weights in force in only {in_force:.0%} of samples"
        last = samples[-1]
        # the old 4-wall-tick TTL made the data plane fall back on nearly every tick
        assert last["fallbacks"] <= 1, (first, last)   # start-up included (was ~1 per tick)
        assert last["msg_in_rej_stale"] - first["msg_in_rej_stale"] <= 1
        assert last["msg_in_accepted"] > first["msg_in_accepted"] + 20
    finally:
        for p in (lbd, dp):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    log = (tmp_path / "dp.log").read_text()
    assert re.search(r"wrote .*lbsim-dataplane-", log), log   # default summary: not the cwd
    assert not (tmp_path / "dataplane-summary.json").exists()
