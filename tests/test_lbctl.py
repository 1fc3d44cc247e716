"""lbctl against a real lbd subprocess; control-socket permissions; metrics."""

from __future__ import annotations

import json
import os
import re
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
    assert "weights in force: " in out
    assert "policy fallbacks (lbd's policy -> sed)" in out
    assert "fell back to static weights" in out
    # the VIP block, laid out like VPP's `show lb vips verbose`
    lines = out.splitlines()
    vip = next(i for i, ln in enumerate(lines) if ln.startswith("vip "))
    assert "#servers 3" in lines[vip]
    hdr = lines[vip + 1].split()
    for col in ("server", "admin", "published", "in", "force", "active", "fct", "mean"):
        assert col in hdr
    rows = [ln.split() for ln in lines[vip + 2:]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    # id admin published in-force static active new/s fct-mean ...
    assert rows[0][1] == "up" and rows[0][5] == "5" and float(rows[0][7]) == pytest.approx(200.0)
    assert float(rows[2][2]) == 4.0


def test_status_names_servers_from_the_config(running, tmp_path):
    """Names/addresses come from lbd's config [servers] (the ABI has ids only)."""
    from marllb.daemon.config import load_config
    from marllb.daemon.lbctl import format_status, server_names

    dp, pub, lbd = running
    st = lbd.status()
    path = tmp_path / "named.toml"
    path.write_text('[servers]\n0 = "10.0.0.1:80"\n2 = "web-c"\n')
    assert load_config(path).server_names == {0: "10.0.0.1:80", 2: "web-c"}
    st["config"] = str(path)
    assert server_names(st) == {0: "10.0.0.1:80", 2: "web-c"}
    out = format_status(st)
    assert "0 10.0.0.1:80" in out and "2 web-c" in out


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
    assert 'marllb_lbd_server_weight{name="",server="2",state="up"} 4.0' in body
    assert 'marllb_lbd_server_active_flows{name="",server="0",state="up"} 5.0' in body
    # one meaning per name: lbd's policy fallbacks vs the data plane's fallbacks
    assert "marllb_lbd_policy_fallbacks_total 0.0" in body
    assert "marllb_dataplane_static_fallbacks_total" in body
    assert "marllb_lbd_fallbacks_total" not in body
    assert 'marllb_dataplane_weights_source{source="daemon"}' in body
    assert 'marllb_dataplane_msg_in_total{result="accepted"}' in body
    assert "marllb_lbd_weights_ttl_seconds" in body
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


def _lbctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marllb.daemon.lbctl", *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)


def _fake_lbd(path, behaviour):
    """A listening socket whose one connection gets ``behaviour(conn)``."""
    import socket as _s
    import threading

    srv = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)

    def serve():
        conn, _ = srv.accept()
        behaviour(conn, srv)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_daemon_dying_mid_reply_is_one_line_not_a_traceback(tmp_path):
    import time as _t

    def die(conn, srv):   # the daemon exits with the request unread: ECONNRESET
        _t.sleep(0.3)
        srv.close()
        os.unlink(tmp_path / "d.sock")
        conn.close()

    srv, t = _fake_lbd(tmp_path / "d.sock", die)
    r = _lbctl("--socket", str(tmp_path / "d.sock"), "status")
    t.join(5)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "not running" in r.stderr


def test_busy_daemon_exit_code_4_says_retry(tmp_path):
    import threading

    release = threading.Event()
    srv, t = _fake_lbd(tmp_path / "b.sock", lambda conn, srv: (conn.recv(1024), release.wait(10)))
    try:
        r = _lbctl("--socket", str(tmp_path / "b.sock"), "--timeout", "0.5", "ping")
        assert r.returncode == 4 and "retry" in r.stderr and "Traceback" not in r.stderr
    finally:
        release.set()
        t.join(5)
        srv.close()


def test_exit_codes_documented_in_one_table():
    from marllb.daemon import lbctl

    doc = lbctl.__doc__
    for code, word in ((0, "ok"), (1, "refused"), (2, "usage"), (3, "not running"),
                       (4, "busy"), (5, "permission")):
        assert re.search(rf"^  {code}\s+.*{word}", doc, re.M), (code, word)
    readme = (ROOT / "README.md").read_text()
    assert "| exit code |" in readme and "lbd is busy" in readme


def test_help_lists_every_subcommand_with_a_description():
    r = _lbctl("--help")
    assert r.returncode == 0
    for cmd in ("status", "weights", "reload", "policy", "hold", "ping"):
        assert re.search(rf"^    {cmd}\s+\S", r.stdout, re.M), cmd
    for cmd in ("status", "weights", "reload", "ping", "hold"):
        sub = _lbctl(cmd, "--help")
        assert sub.returncode == 0
        desc = sub.stdout.split("\n\n")[1]
        assert len(desc.split()) >= 4 and not desc.startswith(("positional", "options")), cmd


def test_default_socket_per_user_and_env(tmp_path):
    from marllb.daemon.config import default_socket

    env = {k: v for k, v in os.environ.items()
           if k not in ("LBD_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")}
    code = "from marllb.daemon.config import default_socket; print(default_socket())"

    def sock(**extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra},
                              capture_output=True, text=True, cwd=ROOT).stdout.strip()

    assert sock(LBD_SOCKET="/x/y.sock") == "/x/y.sock"
    if os.geteuid() == 0:
        assert sock() == "/run/marllb/lbd.sock"
        assert default_socket() in ("/run/marllb/lbd.sock", os.environ.get("LBD_SOCKET"))
    else:
        assert sock(RUNTIME_DIRECTORY="/run/marllb") == "/run/marllb/lbd.sock"
        assert sock(XDG_RUNTIME_DIR="/run/user/7") == "/run/user/7/marllb/lbd.sock"
        assert sock() == f"/tmp/marllb-{os.geteuid()}/lbd.sock"


def test_watch_redraws_and_survives_a_missing_daemon(tmp_path):
    import io

    from marllb.daemon.lbctl import LbctlError, watch

    calls = []

    def fetch():
        calls.append(1)
        raise LbctlError("lbd is not running (no control socket at /x)", 3)

    buf = io.StringIO()
    assert watch(fetch, 0.01, count=3, out=buf) == 0
    assert len(calls) == 3 and buf.getvalue().count("lbctl status --watch") == 3
    assert "not running" in buf.getvalue()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_permission_denied_is_exit_5(running):
    """An operator outside the socket's group gets exit 5 and the way out, in one line."""
    import contextlib
    import io

    from marllb.daemon.lbctl import main as lbctl_main

    dp, pub, lbd = running
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(r)
            err = io.StringIO()
            os.setgid(65534)
            os.setuid(65534)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = lbctl_main(["--socket", lbd.sock, "status"])
            os.write(w, err.getvalue().encode())
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 4096).decode()
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 5, msg
    assert "permission denied" in msg and "group" in msg


def test_watch_shows_what_changed_since_the_last_redraw():
    import io

    from marllb.daemon.lbctl import watch

    base = {"pid": 1, "state": "running", "uptime_s": 1, "ticks": 10, "overruns": 0,
            "hold": False, "policy": "sed", "mode": "sed", "tick_ms": 100, "target_hz": 10,
            "achieved_hz": 10, "jitter": {"p50_us": 1, "p99_us": 2}, "stages": {},
            "region": "r", "reattaches": 0, "fallback_policy": "sed", "fallback_events": 0,
            "fallback_ticks": 0, "publishes": 10,
            "dp": {"msg_in_accepted": 5, "msg_in_rej_stale": 0, "msg_in_rej_gen": 0,
                   "msg_in_rej_invalid": 0, "fallbacks": 1, "weights_source": 1}}
    seq = iter([base, {**base, "ticks": 30, "publishes": 29,
                       "dp": {**base["dp"], "msg_in_accepted": 24, "fallbacks": 3}}])
    buf = io.StringIO()
    watch(lambda: next(seq), 0.01, count=2, out=buf)
    last = buf.getvalue().split("lbctl status --watch")[-1]
    assert "since the last redraw: ticks +20, publishes +19" in last
    assert "msg_in accepted +19, data-plane fallbacks +2" in last
    assert "weights in force: yes" in last
    from marllb.daemon.lbctl import format_status

    shown = format_status({**base, "ttl_ms": 1600.0, "dp_clock_rate": 4.0})
    assert "ttl 1600 ms data-plane (dp clock x4)" in shown      # when status.py carries it
    assert "NO (the data plane uses its static weights)" in format_status(
        {**base, "dp": {**base["dp"], "weights_source": 0}})
