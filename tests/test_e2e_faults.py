"""End to end, fault injection on the statistics the daemon reads."""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path

import pytest
from marllb.daemon._core import ffi
from marllb.daemon.shm import Region

from tests.e2e import E2E, SRC_DAEMON, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def e2e(tmp_path: Path):
    h = E2E(tmp_path)
    yield h
    h.close()


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
