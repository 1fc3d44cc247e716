"""The event-driven cluster model and its fast in-process driver.

Clients -> edge ECMP router (a seeded split over the LBs) -> LB k (the real C
data-plane core, ``SimLB``) -> server j.  Servers are processor-sharing
queues: ``cores`` x ``speed`` unit cores (times an interference factor),
at most ``workers`` jobs in service, up to ``backlog`` connections waiting
(FIFO) beyond that, and any further connection is rejected (the LB sees an
RST).  A job of n iterations needs n / scenario.speed core-seconds.

Processor sharing uses the virtual-time trick: per server, V(t) is the
service each job in service has received; it grows at the per-job rate
``r = cap / max(n, cores)`` (cap = cores x speed x factor), so a job that
enters at V0 with work w leaves when V reaches V0 + w.  A per-server heap of
finish virtual times plus one indexed heap of next completions over the
servers make every event O(log n).  The events (arrivals, service,
completions, capacity changes) run in C (``csrc/cluster_core.c``, the same
cffi module as the data-plane core) between ticks; ticks run here.

Every ``tick_ms`` of simulated time each LB runs its timer (apply msg_in,
publish msg_out) and then its daemon (``SimDaemon``: snapshot -> features ->
policy -> msg_in), in that order, as the plugin and lbd would.

The ``oracle`` is simulator-only: global SED, argmin (in_system + 1) / cap
over the TRUE server state and capacity (interference included).  It has no
data plane to ask, so it bypasses the C core's selection (its flows never
touch an LB; no ticks run).  It is the practical lower bound, not a policy
that could ship.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marllb.sim.lb import SimDaemon, SimLB
from marllb.sim.scenario import Scenario
from marllb.sim.traces import Trace

ORACLE = "oracle"
T0_NS = 1_000_000_000   # data-plane clock at simulated time 0 (never a 0 timestamp)


_BLAS: list[Any] = []


def one_blas_thread() -> Any:
    """Context: numpy's BLAS on one thread.  The simulator is single-threaded
    and parallel runs are separate workers; the learned policies' small
    matmuls run ~10x slower with BLAS threads fighting over the cores, and
    every executor then computes them the same way."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _make_lb(k: int, **kwargs: object) -> SimLB:
    return SimLB(**kwargs)  # type: ignore[arg-type]


@dataclass
class Tick:
    """What a driver sees at a tick (simulated time ``t`` s = ``now_ns``)."""
    t: float
    now_ns: int
    lbs: list[SimLB]
    in_system: np.ndarray      # (M,) per server: jobs in service + waiting
    capacity: np.ndarray       # (M,) per server: unit cores now (interference included)


@dataclass
class SimResult:
    policy: str
    arrival: np.ndarray        # (F,) s
    done: np.ndarray           # (F,) s, NaN if rejected
    server: np.ndarray         # (F,) int, -1 if no server
    lb: np.ndarray             # (F,) int
    rejected: np.ndarray       # (F,) bool
    work: np.ndarray           # (F,) core-seconds
    capacity_cores: np.ndarray  # (M,) time-averaged capacity over the run
    tick_t: np.ndarray         # (T,) s
    tick_load: np.ndarray      # (T, M) jobs in system / cores
    tick_weights: np.ndarray   # (T, M) weights in force at LB 0
    warmup_s: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def jct(self) -> np.ndarray:
        ok = np.isfinite(self.done) & (self.arrival >= self.warmup_s)
        return self.done[ok] - self.arrival[ok]

    def details(self) -> dict:
        """Extra metrics beyond summary(): per-server utilisation (work served /
        capacity x time), weight churn at LB 0 (mean over ticks of
        sum |w_t - w_t-1| / sum w_t-1) and the data-plane counters."""
        served = np.isfinite(self.done)
        busy = np.bincount(self.server[served], weights=self.work[served],
                           minlength=len(self.capacity_cores))
        span = float(self.meta.get("sim_time_s", 0.0)) or 1.0
        w = self.tick_weights
        churn = 0.0
        if w.shape[0] > 1:
            prev = w[:-1].sum(axis=1)
            d = np.abs(np.diff(w, axis=0)).sum(axis=1)
            churn = float(np.mean(np.where(prev > 0, d / np.where(prev > 0, prev, 1), 0.0)))
        return {
            "server_utilisation": (busy / (self.capacity_cores * span)).round(4).tolist(),
            "weight_churn": churn,
            **{k: v for k, v in self.meta.items() if k != "stopped_early"},
        }

    def summary(self) -> dict[str, float]:
        jct_ms = self.jct * 1e3
        scored = self.arrival >= self.warmup_s
        n = int(scored.sum())
        served = np.isfinite(self.done)
        busy = np.bincount(self.server[served], weights=self.work[served],
                           minlength=len(self.capacity_cores))
        x = busy / self.capacity_cores
        jain = float(x.sum() ** 2 / (len(x) * (x * x).sum())) if (x * x).sum() > 0 else 1.0
        pct = (np.percentile(jct_ms, [50, 90, 99]) if jct_ms.size
               else np.array([math.nan] * 3))
        return {
            "jct_mean_ms": float(jct_ms.mean()) if jct_ms.size else math.nan,
            "jct_p50_ms": float(pct[0]),
            "jct_p90_ms": float(pct[1]),
            "jct_p99_ms": float(pct[2]),
            "rejected_frac": float(self.rejected[scored].sum() / n) if n else 0.0,
            "jain_load_over_capacity": jain,
            "flows": float(len(self.arrival)),
        }


def _interference_changes(sc: Scenario, horizon_s: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Capacity changes (time, server, factor), sorted by (time, server, factor)."""
    ev = []
    for j, g in enumerate(sc.expanded_servers()):
        it = g.interference
        if it is None:
            continue
        t = it.start_s
        while t < horizon_s:
            ev.append((t, j, it.factor))
            ev.append((t + it.on_s, j, 1.0))
            t += it.period_s
    ev.sort()
    a = np.asarray(ev, dtype=np.float64).reshape(-1, 3)
    return (np.ascontiguousarray(a[:, 0]), a[:, 1].astype(np.int32),
            np.ascontiguousarray(a[:, 2]))


class _Core:
    """The C event core (csrc/cluster_core.c) over numpy arrays it reads and
    fills in place: arrivals, processor-sharing service and completions run
    in C between ticks; the per-server state is read here without copies."""

    def __init__(self, sc: Scenario, trace: Trace, seed: int, dps: list[Any]) -> None:
        from marllb.daemon._core import ffi, lib

        self._lib = lib
        servers = sc.expanded_servers()
        M, L, nw = len(servers), sc.edge.n_lbs, sc.edge.workers_per_lb
        F = len(trace)
        rng = np.random.default_rng([seed, 0x51A1])
        self.arr_t = np.ascontiguousarray(trace.times, dtype=np.float64)
        self.work = np.ascontiguousarray(trace.sizes / sc.speed, dtype=np.float64)
        lb = rng.choice(L, size=F, p=sc.edge.shares()) if L > 1 else np.zeros(F, np.int64)
        h = rng.integers(1, 2**63, size=F, dtype=np.int64)
        self.lb = lb.astype(np.int32)
        self.hash = h.view(np.uint64)
        self.worker = (h % nw).astype(np.uint32) if nw > 1 else np.zeros(F, np.uint32)
        self.arr_ns = ((self.arr_t * 1e9).astype(np.int64) + T0_NS).view(np.uint64)
        self.done = np.full(F, math.nan)
        self.server = np.full(F, -1, dtype=np.int32)
        self.rejected = np.zeros(F, dtype=np.uint8)
        self.cores = np.array([float(g.cores) for g in servers])
        self.speed = np.array([float(g.speed) for g in servers])
        self.factor = np.ones(M)
        self.workers = np.array([g.workers for g in servers], dtype=np.uint32)
        self.backlog = np.array([min(g.backlog, 2**32 - 1) for g in servers], dtype=np.uint32)
        self.in_service = np.zeros(M, dtype=np.uint32)
        self.waiting = np.zeros(M, dtype=np.uint32)
        self.cap_int = np.zeros(M)
        self.cap_last = np.zeros(M)
        horizon = (float(self.arr_t[-1]) if F else 0.0) + 3600.0
        self.chg_t, self.chg_server, self.chg_factor = _interference_changes(sc, horizon)
        self._dps = ffi.new("mlb_dp_t *[]", list(dps) or 1)
        cfg = ffi.new("mlb_cl_config_t *")
        cfg.n_flows, cfg.n_servers, cfg.n_lbs = F, M, len(dps)
        cfg.n_changes = len(self.chg_t)
        cfg.t0_ns = T0_NS
        cfg.dps = self._dps
        cfg.packet = ffi.addressof(lib, "mlb_dp_packet")
        self._bufs = []
        for name, ctype in (("arr_t", "double"), ("work", "double"), ("lb", "int32_t"),
                            ("worker", "uint32_t"), ("hash", "uint64_t"),
                            ("arr_ns", "uint64_t"), ("done", "double"),
                            ("server", "int32_t"), ("rejected", "uint8_t"),
                            ("cores", "double"), ("speed", "double"), ("factor", "double"),
                            ("workers", "uint32_t"), ("backlog", "uint32_t"),
                            ("in_service", "uint32_t"), ("waiting", "uint32_t"),
                            ("cap_int", "double"), ("cap_last", "double"),
                            ("chg_t", "double"), ("chg_server", "int32_t"),
                            ("chg_factor", "double")):
            arr = getattr(self, name)
            buf = ffi.from_buffer(f"{ctype}[]", arr, require_writable=False) if arr.size \
                else ffi.NULL
            self._bufs.append(buf)
            setattr(cfg, name, buf)
        cl = lib.mlb_cl_create(cfg)
        if cl == ffi.NULL:
            raise MemoryError("mlb_cl_create failed")
        self.cl = ffi.gc(cl, lib.mlb_cl_destroy)
        self._cfg = cfg

    def advance(self, t_stop: float) -> None:
        """Every arrival, capacity change and completion before ``t_stop``."""
        if self._lib.mlb_cl_advance(self.cl, t_stop) != 0:
            raise MemoryError("cluster core: out of memory")

    @property
    def arrived(self) -> int:
        return int(self._lib.mlb_cl_arrived(self.cl))

    @property
    def in_system_total(self) -> int:
        return int(self._lib.mlb_cl_in_system(self.cl))

    def in_system(self) -> np.ndarray:
        return self.in_service.astype(np.int64) + self.waiting

    def capacity(self) -> np.ndarray:
        return self.cores * self.speed * self.factor

    def capacity_average(self, end_t: float) -> np.ndarray:
        return (self.cap_int + self.capacity() * (end_t - self.cap_last)) / end_t


class Cluster:
    """One run of a scenario with one policy over one trace."""

    def __init__(self, sc: Scenario, trace: Trace, policy: str, seed: int = 0,
                 checkpoint: str | None = None) -> None:
        self.sc = sc
        self.trace = trace
        self.policy_name = policy
        self.checkpoint = checkpoint
        self.seed = int(seed)

    def run(self, progress: Callable[[float], None] | None = None,
            on_tick: Callable[[float, int, list[SimLB]], bool] | None = None,
            make_lb: Callable[..., SimLB] | None = None) -> SimResult:
        """Run to the end of the trace and drain every job (or until ``on_tick``
        returns False).  By default every LB runs its timer and then an
        in-process daemon with ``policy`` each tick.  ``on_tick(t_s, now_ns,
        lbs)`` replaces that (the real-time driver: timers only, an outside
        daemon writes msg_in); ``make_lb(k, **kwargs)`` builds LB k (e.g. over
        a shm region).
        """
        with one_blas_thread():
            return self._run(progress, on_tick, make_lb)

    def _run(self, progress: Callable[[float], None] | None,
             on_tick: Callable[[float, int, list[SimLB]], bool] | None,
             make_lb: Callable[..., SimLB] | None) -> SimResult:
        gen = self.ticks(progress=progress, make_lb=make_lb)
        daemons: list[SimDaemon] | None = None
        try:
            tick = next(gen)
            while True:
                stop = False
                if on_tick is not None:
                    stop = not on_tick(tick.t, tick.now_ns, tick.lbs)
                else:
                    if daemons is None:
                        daemons = self._daemons(tick.lbs)
                    now_ns = tick.now_ns
                    for lb, d in zip(tick.lbs, daemons, strict=True):
                        lb.timer(now_ns)
                        d.tick()
                tick = gen.send(stop)
        except StopIteration as e:
            return e.value

    def _daemons(self, lbs: list[SimLB]) -> list[SimDaemon]:
        return [SimDaemon(lb, self.policy_name, checkpoint=self.checkpoint,
                          ttl_ns=int(self.sc.ttl_ms * 1e6), seed=self.seed * 1000 + k + 77)
                for k, lb in enumerate(lbs)]

    def make_lbs(self, make_lb: Callable[..., SimLB] | None = None,
                 mode: int | None = None) -> list[SimLB]:
        """The scenario's LBs (none for the oracle), configured with ``mode``
        or the policy's."""
        sc = self.sc
        if self.policy_name == ORACLE:
            return []
        if mode is None:
            from marllb.daemon.policies import make_policy

            mode = int(make_policy(self.policy_name, checkpoint=self.checkpoint).mode)
        static = [g.static_weight if g.static_weight is not None else g.cores * g.speed
                  for g in sc.expanded_servers()]
        tick_ns = int(round(sc.tick_ms * 1e6))
        return [(make_lb or _make_lb)(
            k, n_servers=sc.n_servers, n_workers=sc.edge.workers_per_lb,
            static_weights=static, mode=mode, seed=self.seed * 1000 + k + 1,
            publish_interval_ns=tick_ns, name=f"sim-lb{k}", flow_capacity=flow_capacity(sc))
            for k in range(sc.edge.n_lbs)]

    def ticks(self, progress: Callable[[float], None] | None = None,
              make_lb: Callable[..., SimLB] | None = None, mode: int | None = None,
              ) -> Generator[Tick, bool | None, SimResult]:
        """The model as a generator, for drivers that act between ticks (the
        training env, the real-time driver).  Yields a ``Tick`` every
        ``tick_ms`` of simulated time BEFORE anything runs on the LBs: the
        consumer runs each LB's ``timer(now_ns)`` and writes msg_in as it
        likes, then ``send(False)`` (or ``next``) to go on, ``send(True)`` to
        stop early.  Returns (``StopIteration.value``) the ``SimResult``.
        The LBs' configured mode is ``mode`` or the policy's.  With policy
        ``oracle`` there are no LBs (``tick.lbs == []``).
        """
        lbs = self.make_lbs(make_lb, mode)
        core = _Core(self.sc, self.trace, self.seed, [lb.dp for lb in lbs])
        rec = _TickLog(lbs, core)
        F = len(self.trace)
        tick_s = self.sc.tick_ms / 1e3
        next_tick, next_prog, stopped = 0.0, 0, False
        while True:
            core.advance(next_tick)                        # arrivals, service, completions
            if core.arrived >= F and core.in_system_total == 0:
                break
            tick = Tick(next_tick, int(round(next_tick * 1e9)) + T0_NS, lbs,
                        core.in_system(), core.capacity())
            if (yield tick):
                stopped = True
                break
            rec.record(tick)
            next_tick += tick_s
            if progress is not None and core.arrived >= next_prog:
                progress(core.arrived / F if F else 1.0)
                next_prog = core.arrived + 2000
        if progress is not None:
            progress(1.0)
        return self._result(core, lbs, rec, max(next_tick, 1e-9), stopped)

    def _result(self, core: _Core, lbs: list[SimLB], rec: _TickLog, end_t: float,
                stopped: bool) -> SimResult:
        meta: dict[str, Any] = {}
        if lbs:
            st = [lb.stats() for lb in lbs]
            meta = {
                "msg_in_accepted": int(sum(s.msg_in_accepted for s in st)),
                "msg_in_rejected": int(sum(s.msg_in_rej_stale + s.msg_in_rej_gen
                                           + s.msg_in_rej_invalid for s in st)),
                "untracked_flows": int(sum(s.untracked_flows for s in st)),
            }
        meta["unfinished"] = core.in_system_total
        meta["stopped_early"] = stopped
        meta["sim_time_s"] = float(end_t)
        i = core.arrived
        return SimResult(
            policy=self.policy_name,
            arrival=core.arr_t[:i].copy(),
            done=core.done[:i].copy(),
            server=core.server[:i].astype(np.int64),
            lb=core.lb[:i].astype(np.int64),
            rejected=core.rejected[:i].astype(bool),
            work=core.work[:i].copy(),
            capacity_cores=core.capacity_average(end_t),
            tick_t=np.asarray(rec.t),
            tick_load=rec.array(rec.load),
            tick_weights=rec.array(rec.weights),
            warmup_s=self.sc.warmup_s,
            meta=meta,
        )


class _TickLog:
    """Per tick: time, jobs in system / cores, weights in force at LB 0."""

    def __init__(self, lbs: list[SimLB], core: _Core) -> None:
        self.lb0 = lbs[0] if lbs else None
        self.core = core
        self.t: list[float] = []
        self.load: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []

    def record(self, tick: Tick) -> None:
        self.t.append(tick.t)
        self.load.append(tick.in_system / self.core.cores)
        self.weights.append(self.lb0.weights() if self.lb0 is not None else tick.capacity)

    def array(self, rows: list[np.ndarray]) -> np.ndarray:
        M = len(self.core.cores)
        return np.asarray(rows, dtype=np.float64).reshape(len(self.t), M)


def flow_capacity(sc: Scenario) -> int:
    """Per-worker flow-table size: 4x the connections the cluster can hold
    through the busiest LB (its traffic share; the timer sweeps the table
    every tick, so 64 LBs must not each size for the whole cluster)."""
    hold = sum(g.count * (g.workers + g.backlog) for g in sc.servers) * max(sc.edge.shares())
    return max(1024, 1 << (4 * math.ceil(hold) - 1).bit_length())


def scenario_trace(sc: Scenario, seed: int) -> Trace:
    """The scenario's generated trace for this seed (repeatable)."""
    from marllb.sim.traces import generate

    tr = sc.traffic
    return generate(arrivals=tr.arrivals, sizes=tr.sizes, rate=sc.arrival_rate(),
                    duration_s=tr.duration_s, mean_size=tr.mean_size,
                    seed=np.random.default_rng([sc.seed, seed]),
                    sigma=tr.sigma, alpha=tr.alpha, burst_ratio=tr.burst_ratio,
                    on_frac=tr.on_frac, mean_period_s=tr.mean_period_s,
                    amplitude=tr.amplitude, period_s=tr.period_s)
