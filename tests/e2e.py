"""Harness for the end-to-end suite: the real `lbsim dataplane` process owning a
real shm region, the real `lbd` process attached to it, `lbctl` to ask it, and
a read-only view of the region to check what the data plane applies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marllb.daemon import shm
from marllb.daemon._core import ffi, lib

SPEED = 4.0          # simulated seconds per wall second
SIM_TICK_MS = 250.0  # the scenario's tick = data-plane publish interval

# 1 LB, 3 servers (2:1:1 cores, correct static weights), load 0.8 by default.
BASE_SCENARIO = """
name = "e2e"
description = "end-to-end tests: 1 LB, 3 servers 2:1:1"
seed = 3
tick_ms = 250
ttl_ms = 1000
[edge]
n_lbs = 1
[traffic]
arrivals = "poisson"
sizes = "exponential"
target_load = {load}
duration_s = {duration}
[[servers]]
count = 1
cores = 2
static_weight = 2
workers = 32
backlog = 64
{interference}
[[servers]]
count = 2
cores = 1
static_weight = 1
workers = 32
backlog = 64
"""


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class NotifySocket:
    """A test NOTIFY_SOCKET collecting sd_notify datagrams in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except OSError:
                continue

    def count(self, line: str) -> int:
        return sum(1 for m in list(self.messages) for x in m.split("\n") if x == line)

    def close(self) -> None:
        self._stop = True
        self._t.join(1)
        self.sock.close()


class E2E:
    def __init__(self, tmp: Path, *, duration: float = 400.0, interference: str = "",
                 load: float = 0.8) -> None:
        self.tmp = tmp
        self.region = f"mlbe2e-{os.getpid()}-{int(time.monotonic_ns() % 10**9)}"
        self.scenario = tmp / "e2e.toml"
        self.scenario.write_text(BASE_SCENARIO.format(duration=duration, load=load,
                                                      interference=interference))
        self.sock = tmp / "lbd.sock"
        self.notify = NotifySocket(tmp / "notify.sock")
        self.dp: subprocess.Popen | None = None
        self.lbd: subprocess.Popen | None = None
        self._ro: shm.Region | None = None
        self.logs: list[Any] = []

    # -- processes ------------------------------------------------------------
    def _log(self, name: str) -> Any:
        f = open(self.tmp / f"{name}-{len(self.logs)}.log", "w")  # noqa: SIM115
        self.logs.append(f)
        return f

    def start_dp(self, replace: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "marllb.sim.cli", "dataplane", "--scenario",
               str(self.scenario), "--region", self.region, "--speed", str(SPEED),
               "--out", str(self.tmp / "dp-summary.json")]
        old = self._current_generation()
        if replace:
            cmd.append("--replace")
        self.dp = subprocess.Popen(cmd, stdout=self._log("dp"), stderr=subprocess.STDOUT)
        wait_for(lambda: self._current_generation() not in (old, -1) and self._frames() > 0,
                 what="data plane frames")
        return self.dp

    def start_lbd(self, policy: str = "lsq", *extra: str,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "marllb.daemon.lbd", "--region", self.region,
               "--socket", str(self.sock), "--tick-ms", str(SIM_TICK_MS / SPEED),
               "--policy", policy, "--metrics", "", *extra]
        e = dict(os.environ, NOTIFY_SOCKET=self.notify.path, WATCHDOG_USEC="10000000",
                 **(env or {}))
        self.lbd = subprocess.Popen(cmd, stdout=self._log("lbd"), stderr=subprocess.STDOUT,
                                    env=e)
        wait_for(lambda: self.sock.exists(), what="lbd control socket")
        return self.lbd

    def kill(self, proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(15)

    def close(self) -> None:
        self.kill(self.lbd, signal.SIGTERM)
        self.kill(self.dp, signal.SIGTERM)
        if self._ro is not None:
            self._ro.close()
        shm.unlink(self.region)
        self.notify.close()
        for f in self.logs:
            f.close()

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("*.log")))

    # -- observing ------------------------------------------------------------
    def lbctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "marllb.daemon.lbctl", "--socket",
                               str(self.sock), *args], capture_output=True, text=True,
                              timeout=20)

    def status(self) -> dict[str, Any]:
        r = self.lbctl("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def ro(self) -> shm.Region:
        """A read-only mapping of the current region (re-opened after a restart)."""
        if self._ro is None or self._ro.generation != self._current_generation():
            if self._ro is not None:
                self._ro.close()
            self._ro = shm.Region.attach(self.region, writable=False)
        return self._ro

    def _current_generation(self) -> int:
        try:
            with shm.Region.attach(self.region, writable=False) as r:
                return r.generation
        except shm.RegionError:
            return -1

    def _frames(self) -> int:
        try:
            with shm.Region.attach(self.region, writable=False) as r:
                return r.out_published()
        except shm.RegionError:
            return 0

    def msg_out(self) -> Any:
        f = ffi.new("mlb_msg_out_t *")
        self.ro().snapshot_out(f)
        return f

    def msg_in(self) -> Any:
        m = ffi.new("mlb_msg_in_t *")
        self.ro().snapshot_in(m)
        return m

    def applied(self) -> tuple[int, int, list[float]]:
        """(weights_source, active_mode, weights in force) from msg_out."""
        f = self.msg_out()
        n = f.meta.n_servers
        return (f.meta.weights_source, f.meta.active_mode,
                [f.servers[i].weight for i in range(n)])


SRC_DAEMON = lib.MLB_SRC_DAEMON
SRC_STATIC = lib.MLB_SRC_STATIC
