"""End to end: the real `lbd` over the region owned by the real-time simulated
data plane (`lbsim dataplane`), with faults injected into either side."""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from marllb.daemon._core import lib
from marllb.daemon.lbctl import main as lbctl_main
from tests.e2e import E2E, SPEED, SRC_DAEMON, SRC_STATIC, wait_for

pytestmark = pytest.mark.timeout(120)


def test_ready_ticks_and_weights_applied_by_the_data_plane(e2e: E2E) -> None:
    e2e.start_dp()
    e2e.start_lbd("lsq")
    wait_for(lambda: e2e.notify.count("READY=1") >= 1, what="READY=1")
    st0 = e2e.status()
    t0 = time.monotonic()
    time.sleep(2.0)
    st1 = e2e.status()
    rate = (st1["ticks"] - st0["ticks"]) / (time.monotonic() - t0)
    target = SPEED * 1000 / 250
    assert 0.8 * target <= rate <= 1.1 * target, (rate, target)
    assert st1["state"] == "running" and st1["policy"] == "lsq"
    # lsq's weights (equal, least-active mode) replace the static 2:1:1 SED
    src, mode, w = wait_for(lambda: (a := e2e.applied())[0] == SRC_DAEMON and a,
                            what="daemon weights in force")
    assert mode == lib.MLB_MODE_LEAST_ACTIVE
    assert len(w) == 3 and w[0] == w[1] == w[2] > 0
    assert e2e.msg_out().meta.msg_in_accepted > 0
    assert e2e.notify.count("WATCHDOG=1") > 0
    assert [s["id"] for s in st1["servers"]] == [0, 1, 2]


def test_data_plane_sigkill_and_restart_reattaches(e2e: E2E) -> None:
    e2e.start_dp()
    e2e.start_lbd("lsq")
    wait_for(lambda: e2e.applied()[0] == SRC_DAEMON, what="daemon weights")
    gen0 = e2e.ro().generation
    e2e.kill(e2e.dp, signal.SIGKILL)       # leaves its region behind, like a crashed VPP
    e2e.start_dp(replace=True)
    assert e2e.ro().generation != gen0
    st = wait_for(lambda: (s := e2e.status())["reattaches"] >= 1 and s, what="re-attach")
    assert e2e.lbd.poll() is None
    assert int(st["dp_gen"], 16) == e2e.ro().generation
    # the new data plane applies weights computed for ITS generation
    wait_for(lambda: e2e.applied()[0] == SRC_DAEMON, what="weights on the new data plane")
    assert e2e.msg_in().dp_gen == e2e.ro().generation


def test_daemon_sigkill_falls_back_then_restart_never_publishes_placeholders(e2e: E2E) -> None:
    e2e.start_dp()
    e2e.start_lbd("lsq")
    wait_for(lambda: e2e.applied()[0] == SRC_DAEMON, what="daemon weights")
    e2e.kill(e2e.lbd, signal.SIGKILL)
    # TTL is 1 s of data-plane time: static SED weights 2:1:1 come back
    src, mode, w = wait_for(lambda: (a := e2e.applied())[0] == SRC_STATIC and a,
                            timeout=10, what="static fallback after TTL")
    assert mode == lib.MLB_MODE_SED and w == [2.0, 1.0, 1.0]
    assert e2e.msg_out().meta.fallbacks >= 1

    seen: list[list[float]] = []
    stop = threading.Event()

    def watch() -> None:  # every msg_in the restarted daemon writes
        last = e2e.ro().in_published()
        while not stop.is_set():
            p = e2e.ro().in_published()
            if p != last:
                last = p
                m = e2e.msg_in()
                seen.append([m.weight[i] for i in range(m.n_servers)] or [0.0])
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    try:
        e2e.start_lbd("lsq")
        wait_for(lambda: e2e.applied()[0] == SRC_DAEMON, what="resumed daemon weights")
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
    assert seen, "the restarted daemon published nothing"
    for w in seen:
        assert len(w) == 3 and all(math.isfinite(x) and x > 0 for x in w), w


def test_lbctl_against_stopped_daemon_or_unreadable_socket(e2e: E2E, tmp_path: Path) -> None:
    r = e2e.lbctl("status")
    assert r.returncode != 0 and "not running" in (r.stderr + r.stdout).lower()
    assert "Traceback" not in r.stderr
    e2e.start_dp()
    e2e.start_lbd("sed")
    wait_for(lambda: e2e.notify.count("READY=1") >= 1, what="READY=1")
    if os.getuid() == 0:
        pid = os.fork()
        if pid == 0:  # an unprivileged operator cannot reach the 0660 socket
            ok = False
            try:
                err = io.StringIO()
                os.setgid(65534)
                os.setuid(65534)  # in-process: nobody may not exec root's python
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = lbctl_main(["--socket", str(e2e.sock), "status"])
                ok = rc != 0 and "permission" in err.getvalue().lower()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    e2e.kill(e2e.lbd, signal.SIGTERM)
    assert e2e.lbd.returncode == 0
    r = e2e.lbctl("status")
    assert r.returncode != 0 and "Traceback" not in r.stderr
