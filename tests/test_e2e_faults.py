"""End to end, fault injection on the statistics the daemon reads."""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from marllb.daemon._core import ffi
from marllb.daemon.shm import Region
from tests.e2e import E2E, SRC_DAEMON, wait_for

pytestmark = pytest.mark.timeout(120)


def test_corrupted_msg_out_is_survived_and_counted(e2e: E2E) -> None:
    e2e.start_dp()
    e2e.start_lbd("sed")
    wait_for(lambda: e2e.applied()[0] == SRC_DAEMON, what="daemon weights")
    rw = Region.attach(e2e.region)
    stop = threading.Event()

    def scribble() -> None:  # a second, rogue writer over the frame readers use
        rng = random.Random(1)
        while not stop.is_set():
            f = rw.ptr.out[rw.out_published() & 1]
            buf = ffi.buffer(ffi.addressof(f, "servers"), 3 * ffi.sizeof("mlb_server_stats_t"))
            buf[:] = bytes(rng.getrandbits(8) for _ in range(len(buf)))
            f.servers[0].static_weight = float("nan")
            f.servers[1].weight = -5.0
            f.servers[2].active_flows = 2**64 - 1
            f.res[0][0][0].count = 10**6
            f.res[0][1][0].s[0].value = float("inf")
            time.sleep(0.001)

    t = threading.Thread(target=scribble)
    seq0 = e2e.status()["msg_seq"]
    t.start()
    try:
        wait_for(lambda: e2e.status()["msg_seq"] > seq0 + 20, what="ticks on corrupt frames")
    finally:
        stop.set()
        t.join()
        rw.close()
    assert e2e.lbd.poll() is None
    st = e2e.status()
    assert st["sanitized_frames"] > 0            # counted
    m = e2e.msg_in()
    w = [m.weight[i] for i in range(m.n_servers)]
    assert w and all(math.isfinite(x) and x >= 0 for x in w) and any(x > 0 for x in w)
    # and it recovers: clean frames again give the configured weights
    wait_for(lambda: e2e.applied()[2] == [2.0, 1.0, 1.0], what="clean weights again")


def test_sighup_with_corrupt_checkpoint_keeps_the_old_policy(e2e: E2E, tmp_path: Path) -> None:
    from marllb.daemon import checkpoint as ckpt

    shipped = Path(ckpt.shipped("qmix"))
    mine = tmp_path / "qmix.safetensors"
    shutil.copy(shipped, mine)
    shutil.copy(shipped.with_suffix(".json"), mine.with_suffix(".json"))
    e2e.start_dp()
    e2e.start_lbd("qmix", "--checkpoint", str(mine))
    st = wait_for(lambda: (s := e2e.status())["state"] == "running" and s, what="running")
    assert st["fallback_reason"] is None and st["active_policy"] == "qmix"
    mine.write_bytes(b"\x00garbage" * 100)
    e2e.lbd.send_signal(signal.SIGHUP)
    st = wait_for(lambda: (s := e2e.status())["reload_failures"] >= 1 and s, what="reload")
    assert "qmix" in json.dumps(st["last_reload"]) or st["last_reload"]
    reason = json.dumps(st["last_reload"]).lower()
    assert "checkpoint" in reason or "safetensors" in reason, st["last_reload"]
    seq = st["msg_seq"]
    st = wait_for(lambda: (s := e2e.status())["msg_seq"] > seq + 5 and s, what="ticks")
    assert st["active_policy"] == "qmix" and st["fallback_reason"] is None
    assert e2e.lbd.poll() is None


def test_overloaded_tick_counts_overruns_without_drift(e2e: E2E) -> None:
    e2e.start_dp()
    root = str(Path(__file__).resolve().parent.parent)
    e2e.start_lbd("slow", env={"LBD_POLICY_MODULES": "tests.slow_policy",
                               "SLOW_POLICY_MS": "150", "PYTHONPATH": root})
    wait_for(lambda: e2e.status()["ticks"] >= 3, what="first slow ticks")
    st0, wd0, t0 = e2e.status(), e2e.notify.count("WATCHDOG=1"), time.monotonic()
    time.sleep(3.0)
    st1, wd1, t1 = e2e.status(), e2e.notify.count("WATCHDOG=1"), time.monotonic()
    interval = st1["tick_ms"] / 1e3
    ticks = st1["ticks"] - st0["ticks"]
    overruns = st1["overruns"] - st0["overruns"]
    assert st1["active_policy"] == "slow", st1["fallback_reason"]
    assert overruns >= ticks > 0                     # every slow tick skipped deadlines
    # no drift: ticks + skipped deadlines account for the elapsed time
    slots = (t1 - t0) / interval
    assert abs((ticks + overruns) - slots) <= 0.25 * slots + 3, (ticks, overruns, slots)
    assert wd1 - wd0 >= ticks - 1                    # watchdog fed from the tick loop
    assert e2e.lbd.poll() is None
