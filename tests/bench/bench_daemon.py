"""Group `daemon`: the lbd tick (issue 5).

- ``tick_p50_us_64`` / ``tick_p99_us_64``: one whole tick
  (``TickPipeline.run_once``: snapshot + per-server merge of 4 workers'
  reservoirs in C, features, the ``sed`` policy, sanitize, msg_in publish) on a
  64-server, 4-worker shm region whose reservoirs are all full (K samples);
  percentiles over TICKS ticks, median of REPEATS runs.
- ``tick_p99_us_256``: the same at 256 servers.
- ``tick_stage_p50_us_64_<stage>``: where the 64-server tick goes (snapshot =
  C latch read + merge; features includes ``c_stats``, the one
  ``mlb_reservoir_stats_many`` call, also timed alone).
- ``tick_jitter_p99_us``: a real ``lbd`` process at its default 250 ms tick
  against a fake data plane: p99 of (tick start - deadline), from its status;
  median of JITTER_RUNS runs.
- ``jitter_baseline_p99_us``: for context, the same lateness for a bare loop
  doing nothing but sleep-until-deadline the way lbd does (what this
  machine's scheduler allows at all).
- ``lbd_cpu_pct_64x4`` / ``lbd_cpu_pct_256x16``: a real ``lbd`` process with
  ``qmix`` at its default 250 ms tick against a fake data plane publishing
  full frames (64 servers x 4 workers; 256 x 16): its CPU time (utime +
  stime of all its threads, from /proc/PID/stat) over CPU_SECONDS of wall
  time after start-up, in percent of one core.  One run each.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from marllb.daemon._core import ffi, lib  # noqa: E402
from tests.bench.frames import publish_full  # noqa: E402
from tests.fakedp import FakeDataPlane, unique_name  # noqa: E402

GROUP = "daemon"
REPEATS = 5
TICKS = 2000
FRAMES = 8
JITTER_RUNS = 3
JITTER_TICKS = 48
CPU_SECONDS = 20.0

def tick_percentiles(n_servers: int, n_workers: int = 4) -> tuple[float, float, dict]:
    """(p50, p99 of the whole tick, {stage: p50}) in us, incl. the C stats call alone."""
    from marllb.daemon.tick import PolicySlot, TickPipeline
    from marllb.daemon.timing import STAGES

    rng = np.random.default_rng(n_servers)
    dp = FakeDataPlane.create(unique_name("bd"), n_servers=n_servers, n_workers=n_workers)
    try:
        pipe = TickPipeline(PolicySlot("sed", None, "sed"), daemon_gen=1)
        t = 10**10
        samples = np.empty(TICKS)
        stages = np.empty((TICKS, len(STAGES)))
        stats = ffi.new("mlb_stats_t[]", 2 * n_servers)
        c_stats = np.empty(TICKS)
        for i in range(TICKS):
            if i % (TICKS // FRAMES) == 0:
                t += 250_000_000
                publish_full(dp, rng, t, i)
            t0 = time.perf_counter_ns()
            rec = pipe.run_once(dp.region, w_min=0.1, w_max=10.0, ttl_ns=10**9)
            samples[i] = (time.perf_counter_ns() - t0) / 1e3
            assert rec is not None and rec.published
            stages[i] = np.asarray(pipe.last_durations) / 1e3
            t0 = time.perf_counter_ns()
            lib.mlb_reservoir_stats_many(ffi.cast("mlb_reservoir_t *", pipe.view.merged),
                                         2 * n_servers, t, 0.9, stats)
            c_stats[i] = (time.perf_counter_ns() - t0) / 1e3
        w0 = TICKS // 10
        warm = samples[w0:]
        med = dict(zip(STAGES, np.median(stages[w0:], axis=0).tolist(), strict=True))
        med["c_stats"] = float(np.median(c_stats[w0:]))
        return float(np.percentile(warm, 50)), float(np.percentile(warm, 99)), med
    finally:
        dp.close()


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lbd_cpu_pct(n_servers: int, n_workers: int, policy: str = "qmix",
                seconds: float = CPU_SECONDS) -> float:
    """lbd's CPU (% of one core) at a 250 ms tick, measured after start-up."""
    from marllb.daemon.control import request

    dp = FakeDataPlane.create(unique_name("bc"), n_servers=n_servers, n_workers=n_workers)
    rng = np.random.default_rng(2)
    stop = threading.Event()

    def publisher() -> None:
        k = 0
        while not stop.is_set():
            publish_full(dp, rng, dp.now_ns(), k)
            k += 1
            stop.wait(0.25)

    th = threading.Thread(target=publisher, daemon=True)
    th.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lbd-cpu-"))
    sock = str(tmp / "lbd.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "marllb.daemon.lbd", "--region", dp.name, "--socket", sock,
         "--tick-ms", "250", "--metrics", "", "--log-level", "warning", "--policy", policy],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:      # up, attached and deciding with the policy
            if os.path.exists(sock):
                try:
                    st = request(sock, {"cmd": "status"})["result"]
                    if st.get("ticks", 0) >= 8:
                        break
                except (OSError, KeyError, ValueError):
                    pass
            time.sleep(0.5)
        else:
            raise RuntimeError("lbd did not start ticking")
        c0, t0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = _cpu_s(proc.pid), time.monotonic()
        st = request(sock, {"cmd": "status"})["result"]
        if st.get("active_policy") != policy:
            raise RuntimeError(f"lbd is not running {policy}: {st.get('fallback_reason')}")
        return 100.0 * (c1 - c0) / (t1 - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        stop.set()
        th.join(5)
        dp.close()


def jitter_p99_us() -> float:
    from marllb.daemon.control import request

    dp = FakeDataPlane.create(unique_name("bj"), n_servers=64, n_workers=4)
    rng = np.random.default_rng(1)
    stop = threading.Event()

    def publisher() -> None:
        k = 0
        while not stop.is_set():
            publish_full(dp, rng, dp.now_ns(), k)
            k += 1
            stop.wait(0.05)

    th = threading.Thread(target=publisher, daemon=True)
    th.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lbd-"))
    sock = str(tmp / "lbd.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "marllb.daemon.lbd", "--region", dp.name, "--socket", sock,
         "--tick-ms", "250", "--metrics", "", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30 + JITTER_TICKS * 0.3
        st: dict = {}
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        # query rarely: a status request runs in lbd's control thread and
        # would compete with the tick loop for the GIL
        time.sleep(JITTER_TICKS * 0.25 + 0.5)
        while time.monotonic() < deadline:
            st = request(sock, {"cmd": "status"})["result"]
            if st["ticks"] >= JITTER_TICKS:
                break
            time.sleep(1.0)
        return float(st["jitter"]["p99_us"]) if st else float("nan")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        stop.set()
        th.join(5)
        dp.close()


def baseline_jitter_p99_us(ticks: int = JITTER_TICKS, interval_ns: int = 250_000_000) -> float:
    import select

    spin = 300_000
    late = np.empty(ticks)
    start = time.monotonic_ns()
    for k in range(1, ticks + 1):
        d = start + k * interval_ns
        left = d - time.monotonic_ns() - spin
        if left > 0:
            select.select([], [], [], left / 1e9)
        while time.monotonic_ns() < d:
            pass
        late[k - 1] = (time.monotonic_ns() - d) / 1e3
    return float(np.percentile(late, 99))


def run(progress) -> dict[str, float]:  # noqa: ANN001
    from marllb.daemon.lbd import pin_numeric_threads

    pin_numeric_threads()        # the in-process ticks run as lbd runs them
    out: dict[str, float] = {}
    for n in (64, 256):
        p50s, p99s, meds = [], [], []
        for r in range(REPEATS):
            p50, p99, med = tick_percentiles(n)
            p50s.append(p50)
            p99s.append(p99)
            meds.append(med)
            progress(f"{n} servers x 4 workers, run {r + 1}/{REPEATS}: "
                     f"p50 {p50:.0f} us, p99 {p99:.0f} us; stage p50s "
                     + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
        if n == 64:  # where the time goes (C snapshot+merge, C stats inside features)
            for k in meds[0]:
                out[f"tick_stage_p50_us_64_{k}"] = statistics.median(m[k] for m in meds)
        if n == 64:
            out["tick_p50_us_64"] = statistics.median(p50s)
            out["tick_p99_us_64"] = statistics.median(p99s)
        else:
            out["tick_p50_us_256"] = statistics.median(p50s)
            out["tick_p99_us_256"] = statistics.median(p99s)
    js = []
    for r in range(JITTER_RUNS):
        js.append(jitter_p99_us())
        progress(f"lbd at 250 ms, run {r + 1}/{JITTER_RUNS}: jitter p99 {js[-1]:.0f} us")
    out["tick_jitter_p99_us"] = statistics.median(js)
    out["jitter_baseline_p99_us"] = baseline_jitter_p99_us()
    progress(f"bare sleep loop at 250 ms: p99 {out['jitter_baseline_p99_us']:.0f} us")
    for n, nw in ((64, 4), (256, 16)):
        key = f"lbd_cpu_pct_{n}x{nw}"
        out[key] = lbd_cpu_pct(n, nw)
        progress(f"lbd qmix at 250 ms, {n} servers x {nw} workers: {out[key]:.1f}% of a core")
    return out
