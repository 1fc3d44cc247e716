"""One simulated load balancer: the REAL C data-plane core plus a region.

``SimLB`` owns an ``mlb_dp_t`` (vpp_plugin/core, compiled into
``marllb.daemon._core``) and a region: an in-memory ``mlb_region_t`` for the
fast driver, or a POSIX shm ``Region`` (``marllb.daemon.shm``) that a real
daemon attaches to for ``lbsim dataplane``.  Per flow it makes exactly the
calls the VPP node would: a SYN packet when the flow arrives (the core picks
the server and pins the flow), a FIN when the job completes, an RST when the
server refuses the connection.  ``timer`` is the VPP process node: it applies
msg_in, publishes msg_out and beats the heartbeat.

``SimDaemon`` is what ``lbd`` does once per tick for that LB, in-process:
snapshot_view -> FeatureExtractor.update -> policy.act -> sanitize -> msg_in.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from marllb.daemon._core import ffi, lib

SYN = 1
FIN = 2
RST = 4
W_MIN = 0.01
W_MAX = 1000.0


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
        self.shm = None
        if region is None:
            self._mem = ffi.new("mlb_region_t *")
            gen = generation if generation is not None else (seed * 2654435761 + 1) | 1
            rc = lib.mlb_region_init(self._mem, lib.mlb_region_size(), n_servers, n_workers,
                                     gen & 0xFFFFFFFFFFFFFFFF, publish_interval_ns,
                                     name.encode()[: lib.MLB_NAME_LEN - 1], os.getpid())
            if rc != lib.MLB_OK:
                raise RuntimeError(f"mlb_region_init failed ({rc})")
            self.region = self._mem
        else:
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
    """The daemon's per-tick work for one LB, in-process (no shm, no sockets)."""

    def __init__(self, lb: SimLB, policy: Any, *, ttl_ns: int, seed: int) -> None:
        from marllb.daemon.features import FeatureExtractor

        self.lb = lb
        self.policy = policy
        self.ttl_ns = int(ttl_ns)
        self.view = ffi.new("mlb_out_view_t *")
        self.rng = ffi.new("mlb_rng_t *")
        lib.mlb_rng_seed(self.rng, seed & 0xFFFFFFFFFFFFFFFF)
        self.retries = ffi.new("uint32_t *")
        self.extractor = FeatureExtractor()
        self.daemon_gen = (seed * 0x9E3779B97F4A7C15 + 12345) & 0xFFFFFFFFFFFFFFFF | 1
        self.msg_seq = 0
        self.policy.reset(lb.n_servers)
        self.name = str(getattr(policy, "name", "policy")).encode()[: 31]
        self.last_weights: np.ndarray | None = None
        self.mode = int(policy.mode)

    def tick(self) -> bool:
        """One daemon tick; False when there is no msg_out frame yet."""
        from marllb.daemon.sanitize import sanitize

        rc = lib.mlb_out_snapshot_view(self.lb.region, self.view, self.rng, 64, self.retries)
        if rc != lib.MLB_OK:
            return False
        feats = self.extractor.update(self.view)
        w = sanitize(self.policy.act(feats), feats, W_MIN, W_MAX)
        self.last_weights = w
        self.msg_seq += 1
        region = self.lb.region
        m = lib.mlb_in_begin(region)
        m.daemon_gen = self.daemon_gen
        m.msg_seq = self.msg_seq
        m.dp_gen = feats.dp_gen
        m.dp_t_ns = feats.t_ns
        m.ttl_ns = self.ttl_ns
        m.wall_ns = 0
        m.policy_id = 0
        m.mode = self.mode
        m.n_servers = feats.n
        m.flags = 0
        m.policy_name = self.name
        ffi.memmove(m.weight, np.ascontiguousarray(w, dtype=np.float64), 8 * feats.n)
        lib.mlb_in_commit(region, m)
        return True
