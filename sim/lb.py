"""One simulated load balancer: the REAL C data-plane core plus a region.

``SimLB`` owns an ``mlb_dp_t`` (vpp_plugin/core, compiled into
``marllb.daemon._core``) and a region: an in-memory ``mlb_region_t`` for the
fast driver (``Region.in_memory``), or a POSIX shm ``Region``
(``marllb.daemon.shm``) that a real daemon attaches to for ``lbsim dataplane``;
either way the daemon's own ``Region`` reads and writes it.  Per flow it
makes exactly the calls the VPP node would: a SYN packet when the flow arrives (the core picks
the server and pins the flow), a FIN when the job completes, an RST when the
server refuses the connection.  ``timer`` is the VPP process node: it applies
msg_in, publishes msg_out and beats the heartbeat.

``SimDaemon`` is what ``lbd`` does once per tick for that LB, in-process:
snapshot_view -> FeatureExtractor.update -> policy.act -> sanitize -> msg_in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marllb.daemon._core import ffi, lib

SYN = 1
FIN = 2
RST = 4

def _daemon_default(field: str, fallback: float) -> float:
    try:
        from marllb.daemon.config import Config

        return float(Config.model_fields[field].default)
    except Exception:  # noqa: BLE001 - older daemon: keep the documented default
        return fallback


# the daemon's default weight bounds (lbd's config), used by the in-process daemon
W_MIN = _daemon_default("w_min", 0.1)
W_MAX = _daemon_default("w_max", 10.0)


def have_core() -> bool:
    """True when the C data-plane core is compiled into marllb.daemon._core."""
    return hasattr(lib, "mlb_dp_create")


class SimLB:
    def __init__(self, *, n_servers: int, n_workers: int, static_weights: list[float],
                 mode: int, seed: int, publish_interval_ns: int,
                 region: Any = None, name: str = "sim", generation: int | None = None,
                 idle_timeout_ns: int = 3600 * 10**9, flow_capacity: int = 0) -> None:
        if not have_core():
            raise RuntimeError("the C data-plane core (vpp_plugin/core) is not built into "
                               "marllb.daemon._core: run `python setup.py build_ext --inplace`")
        cfg = ffi.new("mlb_dp_config_t *")
        lib.mlb_dp_config_default(cfg, n_servers, n_workers)
        cfg.mode = mode if mode != lib.MLB_MODE_NONE else lib.MLB_MODE_SED
        cfg.idle_timeout_ns = idle_timeout_ns
        cfg.publish_interval_ns = publish_interval_ns
        cfg.seed = seed & 0xFFFFFFFFFFFFFFFF
        if flow_capacity:
            # the timer sweeps the whole table: size it for the flows the
            # cluster can hold, not VPP's 64 Ki default
            cfg.flow_capacity = flow_capacity
        dp = lib.mlb_dp_create(cfg)
        if dp == ffi.NULL:
            field = ffi.new("char **")
            lib.mlb_dp_config_check(cfg, ffi.cast("const char **", field))
            what = ffi.string(field[0]).decode() if field[0] != ffi.NULL else "?"
            raise ValueError(f"data-plane core refused its config (field {what})")
        self.dp = ffi.gc(dp, lib.mlb_dp_destroy)
        for j, w in enumerate(static_weights):
            lib.mlb_dp_set_server(self.dp, j, j, lib.MLB_ADMIN_UP, float(w))
        self.n_servers = n_servers
        self.n_workers = n_workers
        if region is None:
            from marllb.daemon.shm import Region

            gen = generation if generation is not None else (seed * 2654435761 + 1) | 1
            region = Region.in_memory(n_servers, n_workers,
                                      publish_interval_ns=publish_interval_ns,
                                      generation=gen, name=name)
        # the daemon's Region (in memory, or shm for ``lbsim dataplane``) and its pointer
        self.shm = region
        self.region = region.ptr

    @property
    def generation(self) -> int:
        return int(self.region.hdr.dp_generation)

    def timer(self, now_ns: int) -> int:
        return lib.mlb_dp_timer(self.dp, self.region, now_ns)

    def weights(self) -> np.ndarray:
        return np.array([lib.mlb_dp_weight(self.dp, j) for j in range(self.n_servers)])

    def active(self) -> np.ndarray:
        return np.array([lib.mlb_dp_server_active(self.dp, j) for j in range(self.n_servers)],
                        dtype=np.float64)

    def stats(self) -> Any:
        st = ffi.new("mlb_dp_stats_t *")
        lib.mlb_dp_get_stats(self.dp, st)
        return st


class SimDaemon:
    """What ``lbd`` does each tick for one LB, in-process: the daemon's own
    ``TickPipeline`` (snapshot_view -> FeatureExtractor -> policy, with the
    daemon's heuristic fallback -> sanitize -> msg_in) with the daemon's
    default w_min / w_max, over the LB's region.  No shm, sockets or threads.

    ``policy`` is a registry name; ``checkpoint`` goes to learned policies.
    A policy that cannot be built raises ``PolicyError`` (an evaluation must
    not silently measure the fallback instead)."""

    def __init__(self, lb: SimLB, policy: str, *, ttl_ns: int, seed: int,
                 checkpoint: str | None = None, fallback: str = "sed",
                 w_min: float | None = None, w_max: float | None = None) -> None:
        from marllb.daemon.tick import PolicySlot, TickPipeline

        self.lb = lb
        self.ttl_ns = int(ttl_ns)
        self.w_min = W_MIN if w_min is None else w_min
        self.w_max = W_MAX if w_max is None else w_max
        self.daemon_gen = (seed * 0x9E3779B97F4A7C15 + 12345) & 0xFFFFFFFFFFFFFFFF | 1
        self.slot = PolicySlot.build_strict(policy, checkpoint, fallback)
        self.pipeline = TickPipeline(self.slot, self.daemon_gen,
                                     seed=seed & 0xFFFFFFFFFFFFFFFF)
        self.region = lb.shm
        self.last: Any = None

    @property
    def last_weights(self) -> np.ndarray | None:
        return None if self.last is None else self.last.weights

    def tick(self) -> bool:
        """One daemon tick; False when there is no msg_out frame yet."""
        rec = self.pipeline.run_once(self.region, w_min=self.w_min, w_max=self.w_max,
                                     ttl_ns=self.ttl_ns)
        self.last = rec
        return rec is not None and rec.published
