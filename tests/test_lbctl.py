"""lbctl against a real lbd subprocess; control-socket permissions; metrics."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request

import pytest

from marllb.daemon._core import lib
from marllb.daemon.control import MUTATING, ControlServer
from tests.fakedp import FakeDataPlane, unique_name
from tests.test_daemon import ROOT, lbd_on, wait_for


@pytest.fixture
def running(tmp_path):
    dp = FakeDataPlane.create(unique_name("ctl"), n_servers=3, n_workers=1)
    try:
        with lbd_on(tmp_path, dp, static_weight=[1.0, 2.0, 4.0], active=[5, 6, 7],
                    fct={0: [0.2] * 4, 2: [0.4, 0.6]}) as (pub, lbd):
            yield dp, pub, lbd
    finally:
        dp.close()


def test_status_human_table(running):
    dp, pub, lbd = running
    r = lbd.lbctl("status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("lbd running")
    assert "policy sed" in out and "mode sed" in out
    assert "stages p50/p99 us" in out and "jitter" in out
    assert f"dp_gen {dp.generation:#018x}" in out
    assert "fct mean ms" in out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith(("0 ", "1 ", "2 "))]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert rows[0][1] == "up" and rows[0][4] == "5" and float(rows[0][6]) == pytest.approx(200.0)


def test_weights_and_socket_mode(running):
    dp, pub, lbd = running
    assert stat.S_IMODE(os.stat(lbd.sock).st_mode) == 0o660
    r = lbd.lbctl("weights", "--json")
    assert r.returncode == 0
    w = json.loads(r.stdout)
    assert [x["weight"] for x in w["weights"]] == [1.0, 2.0, 4.0] and w["mode"] == "sed"
    r = lbd.lbctl("weights")
    assert "policy sed" in r.stdout


def test_hold_freezes_weights(running):
    dp, pub, lbd = running
    wait_for(lambda: dp.weights() == [1.0, 2.0, 4.0], what="weights")
    r = lbd.lbctl("hold", "on")
    assert r.returncode == 0 and "hold on" in r.stdout
    pub.set(static_weight=[3.0, 3.0, 3.0])
    seq = lbd.status()["msg_seq"]
    wait_for(lambda: lbd.status()["msg_seq"] > seq + 5, what="ticks while held")
    assert dp.weights() == [1.0, 2.0, 4.0]          # frozen, still republished
    assert lbd.status()["hold"] is True
    assert lbd.lbctl("hold", "off").returncode == 0
    wait_for(lambda: dp.weights() == [3.0, 3.0, 3.0], what="weights follow again")


def test_policy_set(running):
    dp, pub, lbd = running
    r = lbd.lbctl("policy", "set", "lsq")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: (m := dp.read_in()) is not None and m.mode == lib.MLB_MODE_LEAST_ACTIVE,
             what="lsq in msg_in")
    assert lbd.status()["policy"] == "lsq"
    r = lbd.lbctl("policy", "set", "nope")
    assert r.returncode == 1 and "unknown policy 'nope'" in r.stderr
    assert lbd.status()["policy"] == "lsq"          # the old one stays
    r = lbd.lbctl("reload")                          # back to the configured policy
    assert r.returncode == 0 and "reloaded" in r.stdout
    wait_for(lambda: lbd.status()["policy"] == "sed", what="policy back to sed")


def test_metrics_endpoint(running):
    dp, pub, lbd = running
    addr = lbd.status()["metrics"]
    body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    assert 'marllb_lbd_server_weight{server="2",state="up"} 4.0' in body
    assert 'marllb_lbd_server_active_flows{server="0",state="up"} 5.0' in body
    assert "marllb_lbd_tick_seconds_bucket" in body
    assert "marllb_lbd_overruns_total" in body
    assert "marllb_lbd_reattaches_total" in body
    assert "marllb_lbd_frames_seen_total" in body
    assert 'marllb_lbd_state{state="running"} 1.0' in body


def test_not_running_and_bad_socket(tmp_path):
    r = subprocess.run([sys.executable, "-m", "marllb.daemon.lbctl", "--socket",
                        str(tmp_path / "none.sock"), "status"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 3 and "not running" in r.stderr and "Traceback" not in r.stderr
    # a stale socket file with nobody listening
    import socket as _s
    s = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
    s.bind(str(tmp_path / "stale.sock"))
    s.close()
    r = subprocess.run([sys.executable, "-m", "marllb.daemon.lbctl", "--socket",
                        str(tmp_path / "stale.sock"), "status"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 3 and "connection refused" in r.stderr


def test_help():
    for mod in ("lbctl", "lbd"):
        r = subprocess.run([sys.executable, "-m", f"marllb.daemon.{mod}", "--help"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 0 and "usage" in r.stdout


class _FakeDaemon:
    def reload(self, source):
        return {"ok": True}

    def set_hold(self, on):
        return {"ok": True, "hold": on}


def test_mutating_verbs_need_root_or_daemon_user(tmp_path):
    srv = ControlServer(str(tmp_path / "c.sock"), _FakeDaemon())
    try:
        other = 12345 if os.geteuid() != 12345 else 12346
        for cmd in sorted(MUTATING):
            req = {"cmd": cmd, "name": "sed", "on": True}
            rep = srv.dispatch(json.dumps(req).encode(), other)
            assert rep["ok"] is False and "permission denied" in rep["error"]
        assert srv.dispatch(b'{"cmd": "hold", "on": true}', os.geteuid())["ok"] is True
        assert srv.dispatch(b'{"cmd": "hold", "on": true}', 0)["ok"] is True
        assert srv.dispatch(b'{"cmd": "ping"}', other)["ok"] is True   # read-only: anyone
        assert srv.dispatch(b"not json", other)["ok"] is False
        assert "unknown command" in srv.dispatch(b'{"cmd": "rm"}', other)["error"]
    finally:
        srv.stop()


def test_second_daemon_on_same_socket_refused(running, tmp_path):
    dp, pub, lbd = running
    r = subprocess.run([sys.executable, "-m", "marllb.daemon.lbd", "--region", dp.name,
                        "--socket", lbd.sock, "--metrics", ""],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1 and "already listening" in r.stderr
