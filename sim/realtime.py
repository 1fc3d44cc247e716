"""The real-time data-plane stand-in (``lbsim dataplane``).

Creates and owns a POSIX shm region per LB, exactly as the VPP plugin would
(LB 0 gets ``NAME``, LB k >= 1 gets ``NAME-lb<k>``), and runs the same
cluster model as the fast driver in step with the wall clock, sped up by
``speed``: simulated time t happens at wall time start + t / speed.  Every
publish interval of simulated time each LB's C core runs its timer: it
applies whatever msg_in a daemon wrote and publishes msg_out.  No daemon
runs in-process: whatever attaches drives the weights; with none, the core
keeps its configured mode and static weights.

The data-plane clock (msg_out ``t_ns``, heartbeat) is SIMULATED time in ns
(offset by 1 s), so a daemon's TTL is judged on simulated time: at speed X
a daemon ticking every 250 ms of wall time is 250·X ms old in data-plane
terms.

On SIGTERM / SIGINT (or at the end of the trace, after draining) it writes
its summary JSON (atomically) and unlinks its regions.

A region truncated under it (by anything that can write it) is never touched
past its new end (that would be SIGBUS): before every timer call the size is
re-checked (and the header validated), and a shrunk or overwritten region is
replaced by a fresh one under the same name with a new generation (one line on
stderr), as a restarted data plane would; an attached lbd sees the new region
and re-attaches.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from marllb.daemon.fsutil import atomic_write_json
from marllb.sim.cluster import Cluster, SimResult
from marllb.sim.lb import SimLB
from marllb.sim.scenario import Scenario
from marllb.sim.traces import Trace


def _region_problem(reg: Any) -> str | None:
    """Why our own region is no longer safe or usable: truncated under us, or its
    header overwritten (then the core would refuse every timer call in silence)."""
    from marllb.daemon.shm import RegionError

    why = reg.size_problem()
    if why is not None:
        return why
    try:
        reg.validate()
    except RegionError as e:
        return f"region header overwritten: {e}"
    return None


def region_names(name: str, n_lbs: int) -> list[str]:
    return [name] + [f"{name}-lb{k}" for k in range(1, n_lbs)]


class Dataplane:
    def __init__(self, sc: Scenario, trace: Trace, region: str, *, speed: float = 1.0,
                 policy: str = "static", seed: int = 0, replace: bool = False,
                 max_wall_s: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"--speed must be > 0, got {speed}")
        self.sc = sc
        self.trace = trace
        self.names = region_names(region, sc.edge.n_lbs)
        self.speed = float(speed)
        self.policy = policy        # only picks the configured (fallback) mode
        self.seed = seed
        self.replace = replace
        self.max_wall_s = max_wall_s
        self.regions: list[Any] = []
        self._stop = False
        self.ticks = 0
        self.recreated = 0
        self._create_kw: dict[str, dict[str, Any]] = {}

    def _make_lb(self, k: int, **kw: Any) -> SimLB:
        from marllb.daemon.shm import Region

        create_kw = {"n_servers": kw["n_servers"], "n_workers": kw["n_workers"],
                     "publish_interval_ns": kw["publish_interval_ns"]}
        reg = Region.create(self.names[k], replace=self.replace, **create_kw)
        self._create_kw[reg.name] = create_kw
        self.regions.append(reg)
        return SimLB(region=reg, **kw)

    def _recreate(self, lb: SimLB, why: str) -> None:
        """Replace a region that shrank under us (see the module doc)."""
        from marllb.daemon.shm import Region

        old = lb.shm
        print(f"lbsim dataplane: {why}; recreating region {old.name} with a new "
              "generation", file=sys.stderr, flush=True)
        new = Region.create(old.name, replace=True, **self._create_kw[old.name])
        lb.shm, lb.region = new, new.ptr
        self.regions[self.regions.index(old)] = new
        old.close()
        self.recreated += 1

    def _on_tick(self, t: float, now_ns: int, lbs: list[SimLB]) -> bool:
        for lb in lbs:
            if lb.shm is not None:
                why = _region_problem(lb.shm)
                if why is not None:
                    self._recreate(lb, why)
            lb.timer(now_ns)
        self.ticks += 1
        if self._stop:
            return False
        target = self._t0 + t / self.speed
        while True:
            now = time.monotonic()
            if self._stop:
                return False
            if self.max_wall_s is not None and now - self._t0 >= self.max_wall_s:
                return False
            if now >= target:
                return True
            time.sleep(min(0.05, target - now))

    def _signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    def run(self) -> SimResult:
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._t0 = time.monotonic()
            return Cluster(self.sc, self.trace, self.policy, self.seed).run(
                on_tick=self._on_tick, make_lb=self._make_lb)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.close()

    def close(self) -> None:
        for reg in self.regions:
            try:
                reg.unlink()
            except Exception:  # noqa: BLE001 - already gone: nothing to clean
                pass
            try:
                reg.close()
            except Exception:  # noqa: BLE001
                pass
        self.regions = []


def summary_dict(sc: Scenario, trace: str | None, res: SimResult, names: list[str],
                 speed: float) -> dict[str, Any]:
    from marllb.sim.metrics import sla_fairness

    s = {**res.summary(), **sla_fairness(res)}
    return {
        "scenario": sc.name,
        "trace": trace,
        "regions": names,
        "speed": speed,
        "sim_time_s": res.meta.get("sim_time_s", math.nan),
        "stopped_early": res.meta.get("stopped_early", False),
        "unfinished": res.meta.get("unfinished", 0),
        "completed": int(sum(1 for d in res.done if d == d)),
        "rejected": int(res.rejected.sum()),
        "msg_in_accepted": res.meta.get("msg_in_accepted", 0),
        "msg_in_rejected": res.meta.get("msg_in_rejected", 0),
        "policies": {"dataplane": s},
    }


def write_summary(path: Path, d: dict[str, Any]) -> None:
    """Atomically (a kill leaves the previous summary or the new one); OutputError if
    it cannot be written (disk full, ...), the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, d)
