"""lbd as a real subprocess against a real region written by tests/fakedp.py."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from marllb.daemon._core import ffi, lib
from marllb.daemon.control import request
from marllb.daemon.features import FEATURE_NAMES
from marllb.daemon.policies.linear import save_linear
from tests.fakedp import FakeDataPlane, unique_name

ROOT = Path(__file__).resolve().parent.parent
TICK_MS = 20


def wait_for(cond, timeout: float = 10.0, step: float = 0.02, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Notify:
    """A test NOTIFY_SOCKET: collects sd_notify datagrams."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def has(self, line: str) -> bool:
        return any(line in m.split("\n") for m in self.drain())

    def close(self) -> None:
        self.sock.close()


class Publisher:
    """Publishes fake frames every ``interval`` s in a thread, with settable content."""

    def __init__(self, dp: FakeDataPlane, interval: float = 0.01, **frame) -> None:
        self.dp = dp
        self.interval = interval
        self.frame = frame
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.flows = np.zeros(dp.n_servers, dtype=np.int64)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def set(self, **frame) -> None:
        with self.lock:
            self.frame = frame

    def _run(self) -> None:
        while not self.stop_ev.is_set():
            with self.lock:
                frame = dict(self.frame)
                if "new_flows" not in frame:
                    self.flows += np.arange(1, self.dp.n_servers + 1)
                    frame["new_flows"] = self.flows.tolist()
                self.dp.publish(**frame)
            self.stop_ev.wait(self.interval)

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(5)


class Lbd:
    def __init__(self, tmp: Path, region: str, *args: str, config: Path | None = None) -> None:
        self.sock = str(tmp / "lbd.sock")
        self.notify = Notify(tmp / "notify.sock")
        self.log = open(tmp / "lbd.log", "w+")  # noqa: SIM115
        cmd = [sys.executable, "-m", "marllb.daemon.lbd", "--region", region,
               "--socket", self.sock, "--tick-ms", str(TICK_MS), "--metrics", "127.0.0.1:0",
               *args]
        if config is not None:
            cmd += ["--config", str(config)]
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path, WATCHDOG_USEC="5000000")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT)

    def status(self) -> dict:
        return request(self.sock, {"cmd": "status"})["result"]

    def wait_socket(self) -> None:
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None,
                 what="control socket")
        assert self.proc.poll() is None, self.logs()

    def wait_ready(self, timeout: float = 15.0) -> None:
        wait_for(lambda: self.notify.has("READY=1") or self.proc.poll() is not None,
                 timeout, what="READY=1")
        assert self.proc.poll() is None, self.logs()

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def lbctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "marllb.daemon.lbctl", "--socket", self.sock,
                               *args], capture_output=True, text=True, timeout=30, cwd=ROOT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def dp():
    d = FakeDataPlane.create(unique_name("lbd"), n_servers=4, n_workers=2)
    yield d
    d.close()


@contextlib.contextmanager
def lbd_on(tmp_path, dp, **publish):
    """A Publisher (every 10 ms) on ``dp`` and a ready lbd attached to it."""
    pub = Publisher(dp, **publish)
    lbd = Lbd(tmp_path, dp.name)
    try:
        lbd.wait_ready()
        yield pub, lbd
    finally:
        pub.stop()
        lbd.stop()


@pytest.fixture
def running(tmp_path, dp):
    """A fake data plane publishing every 10 ms and an lbd attached to it."""
    with lbd_on(tmp_path, dp, static_weight=[1.0, 2.0, 3.0, 4.0], active=[3, 1, 4, 1],
                fct={0: [0.1, 0.2], 1: [0.3], 3: [0.05] * 10}) as (pub, lbd):
        yield dp, pub, lbd


def weights_of(dp: FakeDataPlane) -> list[float] | None:
    return dp.weights()


def test_ready_weights_and_status(running):
    dp, pub, lbd = running
    msgs = lbd.notify.drain()
    assert any("WATCHDOG=1" in m for m in msgs)
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in msgs)
    m = wait_for(lambda: dp.read_in(), what="msg_in")
    assert m.dp_gen == dp.generation
    assert m.mode == lib.MLB_MODE_SED
    assert ffi.string(m.policy_name).decode() == "sed"
    assert m.ttl_ns == 4 * TICK_MS * 1_000_000
    assert m.n_servers == 4
    assert dp.weights() == [1.0, 2.0, 3.0, 4.0]   # sed = static weights
    out = lbd.lbctl("status", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["state"] == "running" and st["fallback_reason"] is None
    assert st["policy"] == "sed" and st["ticks"] > 0
    assert [s["id"] for s in st["servers"]] == [0, 1, 2, 3]
    assert [s["weight"] for s in st["servers"]] == [1.0, 2.0, 3.0, 4.0]
    assert [s["active_flows"] for s in st["servers"]] == [3, 1, 4, 1]
    assert [s["state"] for s in st["servers"]] == ["up"] * 4
    assert st["servers"][0]["fct_mean_ms"] == pytest.approx(150.0)
    assert st["servers"][3]["fct_count"] == 10
    assert st["servers"][1]["new_flows_per_s"] > 0
    assert st["dp_gen"] == f"{dp.generation:#018x}"
    # relative weights: the ratio bound and whether it bit (daemon/sanitize.py)
    assert st["ratio_bound"] == 100.0
    assert st["bound_clipped"] == 0 and st["bound_clipped_ticks"] == 0


def test_ticks_at_configured_rate(running):
    """Deadline scheduling: every interval is either ticked or counted as an overrun."""
    dp, pub, lbd = running
    a = lbd.status()
    t0 = time.monotonic()
    time.sleep(1.0)
    b = lbd.status()
    elapsed = time.monotonic() - t0
    slots = (b["ticks"] + b["overruns"]) - (a["ticks"] + a["overruns"])
    expected = elapsed * 1000 / TICK_MS
    assert 0.8 * expected <= slots <= 1.2 * expected + 2, (slots, expected)
    assert b["publishes"] > a["publishes"]
    assert b["msg_seq"] == b["publishes"]


def test_waits_for_region_then_attaches(tmp_path):
    name = unique_name("late")
    lbd = Lbd(tmp_path, name)
    dp = pub = None
    try:
        lbd.wait_socket()
        st = wait_for(lambda: (s := lbd.status())["attaches"] == 0 and "does not exist"
                      in (s["reason"] or "") and s, what="waiting status")
        assert st["state"] == "waiting" and "waiting for data plane" in st["reason"]
        assert st["ticks"] == 0
        out = lbd.lbctl("status")
        assert out.returncode == 0 and "waiting" in out.stdout
        assert not lbd.notify.has("READY=1")
        dp = FakeDataPlane.create(name, n_servers=3)
        pub = Publisher(dp, static_weight=[2.0, 1.0, 1.0])
        lbd.wait_ready()
        wait_for(lambda: dp.weights() == [2.0, 1.0, 1.0], what="weights")
        assert lbd.status()["state"] == "running"
    finally:
        if pub:
            pub.stop()
        lbd.stop()
        if dp:
            dp.close()


def test_reattach_after_data_plane_restart(running):
    dp, pub, lbd = running
    wait_for(lambda: dp.read_in(), what="first msg_in")
    pub.stop()
    name = dp.name
    old_gen = dp.generation
    dp.close()                                 # data plane gone
    wait_for(lambda: lbd.status()["state"] == "waiting", what="waiting after loss")
    dp2 = FakeDataPlane.create(name, n_servers=2)  # restarted, new generation, new shape
    assert dp2.generation != old_gen
    pub2 = Publisher(dp2, static_weight=[5.0, 1.0])
    try:
        m = wait_for(lambda: dp2.read_in(), what="msg_in in the new region")
        assert m.dp_gen == dp2.generation and m.n_servers == 2
        wait_for(lambda: dp2.weights() == [5.0, 1.0], what="new weights")
        st = lbd.status()
        assert st["reattaches"] >= 1 and st["state"] == "running"
        assert len(st["servers"]) == 2
    finally:
        pub2.stop()
        dp2.close()


def test_reattach_on_generation_change_in_place(running):
    """A data plane re-initialising the same segment (new generation) is noticed."""
    dp, pub, lbd = running
    wait_for(lambda: dp.read_in(), what="first msg_in")
    before = lbd.status()["attaches"]
    with pub.lock:
        dp.region.ptr.hdr.dp_generation = dp.generation ^ 0xFF00
        dp.frame_no = 0
    wait_for(lambda: lbd.status()["attaches"] > before, what="re-attach")
    wait_for(lambda: (m := dp.read_in()) is not None and m.dp_gen == dp.generation,
             what="msg_in for the new generation")


def test_garbage_statistics_give_sane_weights(running):
    dp, pub, lbd = running
    big = 2**64 - 1
    pub.set(static_weight=[math.nan, -2.0, math.inf, 1e300], active=[big, 0, 7, big // 2],
            new_flows=[big, 0, 2**63, 5], admin=[0, 0, 0, 0],
            fct={0: [math.nan, -1.0], 1: [math.inf], 2: [1e308] * 5, 3: []},
            age={0: [-5.0], 2: [math.nan]})
    seq0 = lbd.status()["msg_seq"]
    wait_for(lambda: lbd.status()["msg_seq"] > seq0 + 5, what="ticks on garbage")
    w = dp.weights()
    assert w is not None and all(math.isfinite(x) for x in w)
    # weights are relative to static (daemon/sanitize.py): the garbage static
    # weights were clamped to [0, 1e9]; up servers get w_min..w_max x static and
    # the ratio between two servers stays within w_max / w_min
    assert all(0 < x <= 10.0 * 1e9 for x in w), w
    assert max(w) / min(w) <= 100.0 * (1 + 1e-9), w
    st = lbd.status()
    assert lbd.proc.poll() is None
    assert st["sanitized_frames"] > 0 and st["sanitized_values"] > 0
    for s in st["servers"]:
        for k in ("weight", "active_flows", "new_flows_per_s", "fct_mean_ms", "fct_p90_ms"):
            assert math.isfinite(s[k]) and s[k] >= 0, (k, s)
    # all servers down: still never all zero
    pub.set(static_weight=[1.0] * 4, admin=[2, 2, 2, 2])
    seq1 = lbd.status()["msg_seq"]
    wait_for(lambda: lbd.status()["msg_seq"] > seq1 + 3, what="ticks with all down")
    assert any(x > 0 for x in dp.weights())


def _write_cfg(path: Path, **kv) -> Path:
    lines = []
    for k, v in kv.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sighup_bad_config_keeps_old_then_good_applies(tmp_path, dp):
    cfg = _write_cfg(tmp_path / "lbd.toml", policy="sed", w_min=0.5, w_max=8.0)
    pub = Publisher(dp, static_weight=[1.0, 2.0, 3.0, 4.0])
    # CLI flags override the file: tick/socket/region come from the command line
    lbd = Lbd(tmp_path, dp.name, config=cfg)
    try:
        lbd.wait_ready()
        _write_cfg(cfg, policy="sed", w_min=-1.0)
        lbd.proc.send_signal(signal.SIGHUP)
        st = wait_for(lambda: (s := lbd.status())["last_reload"] and s, what="reload result")
        assert st["last_reload"]["ok"] is False and "w_min" in st["last_reload"]["error"]
        _write_cfg(cfg, policy="nope")
        lbd.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: lbd.status()["reload_failures"] >= 2, what="second failed reload")
        st = lbd.status()
        assert "unknown policy 'nope'" in st["last_reload"]["error"]
        assert st["policy"] == "sed" and st["w_min"] == 0.5 and st["state"] == "running"
        assert lbd.notify.has("RELOADING=1")
        # a good one applies
        _write_cfg(cfg, policy="lsq")
        lbd.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: lbd.status()["reloads"] >= 1, what="good reload")
        wait_for(lambda: (m := dp.read_in()) is not None and m.mode == lib.MLB_MODE_LEAST_ACTIVE,
                 what="lsq mode in msg_in")
        assert dp.weights() == [1.0] * 4
    finally:
        pub.stop()
        lbd.stop()


def _linear_ckpt(path: Path, w0: float = 0.0, mode: str = "sed") -> Path:
    w = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    w[FEATURE_NAMES.index("static_weight")] = w0
    return Path(save_linear(str(path), w, 0.0, mode))


def test_learned_policy_and_bad_checkpoint_fallbacks(tmp_path, dp):
    good = _linear_ckpt(tmp_path / "good.safetensors", w0=0.0)   # exp(0) = 1 for everyone
    cfg = _write_cfg(tmp_path / "lbd.toml", policy="linear", checkpoint=str(good),
                     fallback_policy="wcmp")
    pub = Publisher(dp, static_weight=[1.0, 2.0, 3.0, 4.0])
    lbd = Lbd(tmp_path, dp.name, config=cfg)
    try:
        lbd.wait_ready()
        wait_for(lambda: dp.weights() == [1.0] * 4, what="linear weights")
        assert lbd.status()["fallback_reason"] is None
        # SIGHUP with a corrupt checkpoint: keeps the old (working) policy
        good.write_bytes(b"garbage, not a safetensors file")   # NAME.safetensors
        lbd.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: lbd.status()["reload_failures"] >= 1, what="failed reload")
        st = lbd.status()
        assert "unreadable tensors" in st["last_reload"]["error"]
        assert st["policy"] == "linear" and st["fallback_reason"] is None
        assert st["state"] == "running"
    finally:
        pub.stop()
        lbd.stop()


def test_missing_checkpoint_at_start_falls_back_loudly(tmp_path, dp):
    pub = Publisher(dp, static_weight=[1.0, 2.0, 3.0, 4.0])
    lbd = Lbd(tmp_path, dp.name, "--policy", "linear", "--checkpoint",
              str(tmp_path / "missing.safetensors"))
    try:
        lbd.wait_ready()
        m = wait_for(lambda: dp.read_in(), what="msg_in")
        assert ffi.string(m.policy_name).decode() == "sed"   # the fallback decided
        st = lbd.status()
        assert st["state"] == "degraded" and "no such file" in st["fallback_reason"]
        assert st["fallback_events"] >= 1
        assert "policy_fallback" in lbd.logs()
    finally:
        pub.stop()
        lbd.stop()


def test_sigterm_exits_0_and_leaves_weights(running):
    dp, pub, lbd = running
    wait_for(lambda: dp.weights() == [1.0, 2.0, 3.0, 4.0], what="weights")
    lbd.proc.send_signal(signal.SIGTERM)
    assert lbd.proc.wait(10) == 0
    pub.stop()
    assert dp.weights() == [1.0, 2.0, 3.0, 4.0]
    assert not os.path.exists(lbd.sock)
    assert lbd.notify.has("STOPPING=1")


def test_nothing_published_before_first_frame(tmp_path):
    """Attached to a region with no msg_out frame yet: never a placeholder msg_in."""
    dp = FakeDataPlane.create(unique_name("noframe"), n_servers=2)
    lbd = Lbd(tmp_path, dp.name)
    try:
        lbd.wait_socket()
        wait_for(lambda: lbd.status()["attached"], what="attach")
        time.sleep(5 * TICK_MS / 1000)
        assert dp.read_in() is None
        assert not lbd.notify.has("READY=1")
        assert lbd.status()["state"] == "waiting"
    finally:
        lbd.stop()
        dp.close()


@pytest.mark.parametrize("content,field", [
    ("tick_ms = -1\n", "tick_ms"),
    ("policy = 'nope'\n", "policy"),
    ("w_min = 3\nw_max = 1\n", "w_max"),
    ("bogus_key = 1\n", "bogus_key"),
    ("tick_ms = [\n", "invalid TOML"),
])
def test_bad_config_exits_78_naming_the_field(tmp_path, content, field):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    r = subprocess.run([sys.executable, "-m", "marllb.daemon.lbd", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and str(cfg) in lines[0], r.stderr


def test_bad_cli_flag_exits_78():
    r = subprocess.run([sys.executable, "-m", "marllb.daemon.lbd", "--tick-ms", "0"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 78 and "tick_ms" in r.stderr


def test_stale_data_plane_stops_publishing(tmp_path, dp):
    """Frames stop (data plane hung, region still there): degraded, no more publishes."""
    cfg = _write_cfg(tmp_path / "lbd.toml", stale_after_ms=200)
    pub = Publisher(dp, static_weight=[1.0, 2.0, 3.0, 4.0])
    lbd = Lbd(tmp_path, dp.name, config=cfg)
    try:
        lbd.wait_ready()
        pub.stop()
        st = wait_for(lambda: (s := lbd.status())["state"] == "degraded" and s,
                      what="degraded on stale frames")
        assert "stale" in st["reason"]
        seq = st["msg_seq"]
        time.sleep(10 * TICK_MS / 1000)
        assert lbd.status()["msg_seq"] == seq
        assert dp.weights() == [1.0, 2.0, 3.0, 4.0]      # last weights left alone
        pub2 = Publisher(dp, static_weight=[1.0, 1.0, 1.0, 1.0])   # frames again
        try:
            wait_for(lambda: lbd.status()["state"] == "running", what="running again")
            wait_for(lambda: dp.weights() == [1.0] * 4, what="publishing again")
        finally:
            pub2.stop()
    finally:
        pub.stop()
        lbd.stop()


def test_abi_mismatch_is_refused_and_waited_out(tmp_path):
    dp = FakeDataPlane.create(unique_name("abi"), n_servers=2)
    dp.region.ptr.hdr.abi_version = 99          # a data plane from another build
    lbd = Lbd(tmp_path, dp.name)
    pub = None
    try:
        lbd.wait_socket()
        st = wait_for(lambda: (s := lbd.status())["reason"] and "ABI version 99" in s["reason"]
                      and s, what="ABI refusal in status")
        assert st["state"] == "waiting" and not st["attached"]
        assert "this build speaks version" in st["reason"]
        time.sleep(0.3)
        assert lbd.proc.poll() is None                # waiting, not crash-looping
        assert dp.read_in() is None
        dp.region.ptr.hdr.abi_version = lib.MLB_ABI_VERSION   # fixed data plane
        pub = Publisher(dp, static_weight=[3.0, 1.0])
        lbd.wait_ready()
        wait_for(lambda: dp.weights() == [3.0, 1.0], what="weights after the fix")
    finally:
        if pub:
            pub.stop()
        lbd.stop()
        dp.close()
