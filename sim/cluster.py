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
finish virtual times plus one global heap of next-completion events (stale
entries dropped by a per-server version) make every event O(log n).

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

import heapq
import math
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from marllb.sim.lb import FIN, RST, SYN, SimDaemon, SimLB
from marllb.sim.scenario import Scenario
from marllb.sim.traces import Trace

ORACLE = "oracle"
T0_NS = 1_000_000_000   # data-plane clock at simulated time 0 (never a 0 timestamp)


def _make_lb(k: int, **kwargs: object) -> SimLB:
    return SimLB(**kwargs)  # type: ignore[arg-type]


@dataclass
class Tick:
    """What a driver sees at a tick (simulated time ``t`` s = ``now_ns``)."""
    t: float
    now_ns: int
    lbs: list[SimLB]
    in_system: list[int]       # per server: jobs in service + waiting
    capacity: list[float]      # per server: unit cores now (interference included)


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


def _interference_events(sc: Scenario, horizon_s: float) -> list[tuple[float, int, float]]:
    ev = []
    for j, g in enumerate(sc.expanded_servers()):
        it = g.interference
        if it is None:
            continue
        t = it.start_s
        while t < horizon_s:
            ev.append((t, -1 - j, it.factor))
            ev.append((t + it.on_s, -1 - j, 1.0))
            t += it.period_s
    return ev


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

    def ticks(self, progress: Callable[[float], None] | None = None,  # noqa: C901
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
        sc = self.sc
        servers = sc.expanded_servers()
        M = len(servers)
        L = sc.edge.n_lbs
        nw = sc.edge.workers_per_lb
        rng = np.random.default_rng([self.seed, 0x51A1])
        F = len(self.trace)
        arr_t = self.trace.times.tolist()
        work_np = self.trace.sizes / sc.speed
        work = work_np.tolist()
        lb_np = rng.choice(L, size=F, p=sc.edge.shares()) if L > 1 else np.zeros(F, np.int64)
        hash_np = rng.integers(1, 2**63, size=F, dtype=np.int64)
        arr_lb = lb_np.tolist()
        arr_h = hash_np.tolist()
        arr_w = (hash_np % nw).tolist() if nw > 1 else [0] * F
        arr_ns = ((self.trace.times * 1e9).astype(np.int64) + T0_NS).tolist()

        cores = [float(g.cores) for g in servers]
        spd = [float(g.speed) for g in servers]
        fac = [1.0] * M
        wcap = [g.workers for g in servers]
        bcap = [g.backlog for g in servers]
        static = [g.static_weight if g.static_weight is not None else g.cores * g.speed
                  for g in servers]

        oracle = self.policy_name == ORACLE
        tick_s = sc.tick_ms / 1e3
        tick_ns = int(round(sc.tick_ms * 1e6))
        lbs: list[SimLB] = []
        if not oracle:
            if mode is None:
                from marllb.daemon.policies import make_policy

                mode = int(make_policy(self.policy_name, checkpoint=self.checkpoint).mode)
            for k in range(L):
                lb = (make_lb or _make_lb)(
                    k, n_servers=M, n_workers=nw, static_weights=static, mode=mode,
                    seed=self.seed * 1000 + k + 1, publish_interval_ns=tick_ns,
                    name=f"sim-lb{k}", flow_capacity=flow_capacity(sc))
                lbs.append(lb)
        dps = [lb.dp for lb in lbs]
        arr_dp = [dps[k] for k in arr_lb] if lbs else []
        from marllb.daemon._core import lib
        pkt = lib.mlb_dp_packet

        # per-server PS state
        V = [0.0] * M
        last = [0.0] * M
        nsv = [0] * M              # jobs in service
        rate = [0.0] * M           # per-job service rate (core-s per s)
        ver = [0] * M
        jh: list[list] = [[] for _ in range(M)]
        bl: list[deque] = [deque() for _ in range(M)]
        # capacity integral for time-averaged capacity
        cap_int = [0.0] * M
        cap_last = [0.0] * M

        done = [math.nan] * F
        srv_of = [-1] * F
        rej = [False] * F

        horizon = (arr_t[-1] if F else 0.0) + 3600.0
        ev: list = _interference_events(sc, horizon)
        heapq.heapify(ev)
        heappush = heapq.heappush
        heappop = heapq.heappop
        inf = math.inf

        tick_t: list[float] = []
        tick_load: list[list[float]] = []
        tick_wts: list[list[float]] = []

        i = 0
        stopped = False
        in_sys = 0
        next_tick = 0.0
        next_prog = 0
        NS = 1e9
        while True:
            ta = arr_t[i] if i < F else inf
            te = ev[0][0] if ev else inf
            if next_tick <= ta and next_tick <= te:
                if i >= F and in_sys == 0:
                    break
                t = next_tick
                now_ns = int(round(t * NS)) + T0_NS
                insys = [nsv[j] + len(bl[j]) for j in range(M)]
                if (yield Tick(t, now_ns, lbs, insys,
                               [cores[j] * spd[j] * fac[j] for j in range(M)])):
                    stopped = True
                    break
                tick_t.append(t)
                tick_load.append([insys[j] / cores[j] for j in range(M)])
                if lbs:
                    tick_wts.append(lbs[0].weights().tolist())
                else:
                    tick_wts.append([cores[j] * spd[j] * fac[j] for j in range(M)])
                next_tick = t + tick_s
                if progress is not None and i >= next_prog:
                    progress(i / F if F else 1.0)
                    next_prog = i + 2000
                continue
            if ta <= te:
                # ---- arrival of flow i
                t = ta
                if oracle:
                    best = 0
                    bv = inf
                    for j in range(M):
                        c = cores[j] * spd[j] * fac[j]
                        v = (nsv[j] + len(bl[j]) + 1) / c
                        if v < bv:
                            bv = v
                            best = j
                    j = best
                else:
                    j = pkt(arr_dp[i], arr_w[i], arr_h[i], arr_ns[i], 100, SYN)
                    if j < 0:
                        rej[i] = True
                        i += 1
                        continue
                srv_of[i] = j
                n = nsv[j]
                if n < wcap[j]:
                    if n:
                        V[j] += rate[j] * (t - last[j])
                    last[j] = t
                    h = jh[j]
                    heappush(h, (V[j] + work[i], i))
                    n += 1
                    nsv[j] = n
                    c = cores[j]
                    r = spd[j] * fac[j] * (1.0 if n <= c else c / n)
                    rate[j] = r
                    v = ver[j] + 1
                    ver[j] = v
                    heappush(ev, (t + (h[0][0] - V[j]) / r, j, v))
                    in_sys += 1
                elif len(bl[j]) < bcap[j]:
                    bl[j].append(i)
                    in_sys += 1
                else:
                    rej[i] = True
                    if not oracle:
                        pkt(arr_dp[i], arr_w[i], arr_h[i], arr_ns[i], 0, RST)
                i += 1
                continue
            # ---- server event
            t, j, v = heappop(ev)
            if j < 0:
                # interference: capacity factor change
                j = -1 - j
                cap_int[j] += cores[j] * spd[j] * fac[j] * (t - cap_last[j])
                cap_last[j] = t
                if nsv[j]:
                    V[j] += rate[j] * (t - last[j])
                last[j] = t
                fac[j] = v
                n = nsv[j]
                if n:
                    c = cores[j]
                    r = spd[j] * v * (1.0 if n <= c else c / n)
                    rate[j] = r
                    vv = ver[j] + 1
                    ver[j] = vv
                    heappush(ev, (t + (jh[j][0][0] - V[j]) / r, j, vv))
                continue
            if v != ver[j]:
                continue
            V[j] += rate[j] * (t - last[j])
            last[j] = t
            h = jh[j]
            _, f = heappop(h)
            done[f] = t
            in_sys -= 1
            if not oracle:
                pkt(arr_dp[f], arr_w[f], arr_h[f], int(t * NS) + T0_NS, 1000, FIN)
            n = nsv[j] - 1
            q = bl[j]
            if q:
                f2 = q.popleft()
                heappush(h, (V[j] + work[f2], f2))
                n += 1
            nsv[j] = n
            if n:
                c = cores[j]
                r = spd[j] * fac[j] * (1.0 if n <= c else c / n)
                rate[j] = r
                vv = ver[j] + 1
                ver[j] = vv
                heappush(ev, (t + (h[0][0] - V[j]) / r, j, vv))
            else:
                ver[j] += 1
        end_t = max(next_tick if not stopped else t, 1e-9)
        for j in range(M):
            cap_int[j] += cores[j] * spd[j] * fac[j] * (end_t - cap_last[j])
        if progress is not None:
            progress(1.0)
        meta = {}
        if lbs:
            st = [lb.stats() for lb in lbs]
            meta = {
                "msg_in_accepted": int(sum(s.msg_in_accepted for s in st)),
                "msg_in_rejected": int(sum(s.msg_in_rej_stale + s.msg_in_rej_gen
                                           + s.msg_in_rej_invalid for s in st)),
                "untracked_flows": int(sum(s.untracked_flows for s in st)),
            }
        meta["unfinished"] = int(in_sys)
        meta["stopped_early"] = stopped
        meta["sim_time_s"] = float(end_t)
        return SimResult(
            policy=self.policy_name,
            arrival=np.asarray(arr_t[:i], dtype=np.float64),
            done=np.asarray(done[:i], dtype=np.float64),
            server=np.asarray(srv_of[:i], dtype=np.int64),
            lb=lb_np[:i].astype(np.int64),
            rejected=np.asarray(rej[:i], dtype=bool),
            work=work_np[:i],
            capacity_cores=np.asarray(cap_int) / end_t,
            tick_t=np.asarray(tick_t),
            tick_load=np.asarray(tick_load, dtype=np.float64).reshape(len(tick_t), M),
            tick_weights=np.asarray(tick_wts, dtype=np.float64).reshape(len(tick_t), M),
            warmup_s=self.sc.warmup_s,
            meta=meta,
        )


def flow_capacity(sc: Scenario) -> int:
    """Per-worker flow-table size: 4x the connections the cluster can hold."""
    hold = sum(g.count * (g.workers + g.backlog) for g in sc.servers)
    return max(1024, 1 << (4 * hold - 1).bit_length())


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
