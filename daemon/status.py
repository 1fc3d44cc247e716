"""The status snapshot: ONE builder for ``lbctl status`` and the metrics.

Built on demand from the daemon's latest TickRecord and counters (never on
the tick path)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from marllb.daemon._core import lib
from marllb.daemon.policies import MODE_NAMES

ADMIN_NAMES = {lib.MLB_ADMIN_UP: "up", lib.MLB_ADMIN_DRAIN: "drain", lib.MLB_ADMIN_DOWN: "down"}
VERSION = "0.1.0"


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def servers_table(rec: Any) -> list[dict[str, Any]]:
    if rec is None:
        return []
    f = rec.features
    cols = {
        "id": f.server_id.tolist(),
        "state": [ADMIN_NAMES.get(a, "down") for a in f.admin_state.tolist()],
        "static_weight": np.round(f.static_weight, 4).tolist(),
        "weight": np.round(rec.weights, 4).tolist(),
        "weight_in_force": np.round(f.weight, 4).tolist(),
        "active_flows": f.active.astype(np.int64).tolist(),
        "new_flows_per_s": np.round(f.new_flow_rate, 2).tolist(),
        "fct_mean_ms": np.round(f.fct[:, 0] * 1e3, 3).tolist(),
        "fct_p90_ms": np.round(f.fct[:, 1] * 1e3, 3).tolist(),
        "fct_count": f.fct_count.tolist(),
        "age_mean_ms": np.round(f.age[:, 0] * 1e3, 3).tolist(),
    }
    keys = list(cols)
    return [dict(zip(keys, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def build_status(d: Any) -> dict[str, Any]:
    """Everything an operator needs at a glance, as plain JSON-able data."""
    now = time.monotonic_ns()
    rec = d.last
    cfg = d.cfg
    slot = d.slot
    region = d.attacher.region
    f = rec.features if rec is not None else None
    reload_info = None
    if d.last_reload is not None:
        reload_info = {k: v for k, v in d.last_reload.items() if k != "mono_ns"}
        reload_info["age_s"] = _r((now - d.last_reload["mono_ns"]) / 1e9, 1)
    fallback_reason = rec.fallback_reason if rec is not None else slot.fallback_reason
    return {
        "state": d.state,
        "reason": d.reason,
        "pid": os.getpid(),
        "version": VERSION,
        "uptime_s": _r((now - d.started_mono) / 1e9, 1),
        "daemon_gen": f"{d.daemon_gen:#018x}",
        "ticks": d.ticks,
        "overruns": d.overruns,
        "frames_seen": d.frames_seen,
        "publishes": d.pipeline.publisher.publishes,
        "msg_seq": d.pipeline.publisher.msg_seq,
        "snapshot_busy": d.pipeline.snapshot_busy,
        "sanitized_frames": d.sanitized_frames,
        "sanitized_values": d.sanitized_values,
        "attaches": d.attacher.attaches,
        "reattaches": d.attacher.reattaches,
        "tick_ms": cfg.tick_ms,
        "achieved_hz": _r(d.times.achieved_hz(), 2),
        "target_hz": _r(1e3 / cfg.tick_ms, 2),
        "jitter": d.times.jitter_us(),
        "stages": d.times.percentiles(),
        "policy": slot.name,
        "active_policy": rec.policy_name if rec is not None else None,
        "mode": MODE_NAMES.get(rec.mode, str(rec.mode)) if rec is not None else None,
        "checkpoint": slot.checkpoint,
        "policy_override": d.policy_override is not None,
        "fallback_policy": slot.fallback.name,
        "fallback_reason": fallback_reason,
        "fallback_ticks": d.fallback_ticks,
        "fallback_events": d.fallback_events,
        "hold": d.hold,
        "w_min": cfg.w_min,
        "w_max": cfg.w_max,
        "ratio_bound": _r(cfg.w_max / cfg.w_min, 3),
        "bound_clipped": rec.clipped if rec is not None else 0,
        "bound_clipped_ticks": d.pipeline.clipped_ticks,
        "region": d.attacher.name,
        "attached": region is not None,
        "dp_gen": f"{f.dp_gen:#018x}" if f is not None else None,
        "frame_no": f.frame_no if f is not None else None,
        "last_frame_age_s": _r((now - d.last_frame_mono) / 1e9) if d.last_frame_mono else None,
        "last_publish_age_s": None if d.last_publish_mono is None
        else _r((now - d.last_publish_mono) / 1e9),
        "dp": dict(f.meta) if f is not None else None,
        "reloads": d.reloads,
        "reload_failures": d.reload_failures,
        "last_reload": reload_info,
        "config": d.config_path,
        "socket": d.socket_path,
        "metrics": d.metrics_address,
        "servers": servers_table(rec),
    }


def weights_view(d: Any) -> dict[str, Any]:
    rec = d.last
    if rec is None:
        return {"policy": None, "mode": None, "hold": d.hold, "published": False, "weights": []}
    return {
        "policy": rec.policy_name,
        "mode": MODE_NAMES.get(rec.mode, str(rec.mode)),
        "hold": d.hold,
        "published": rec.published,
        "msg_seq": d.pipeline.publisher.msg_seq,
        "weights": [{"id": int(i), "weight": round(float(w), 6)}
                    for i, w in zip(rec.features.server_id.tolist(), rec.weights.tolist(),
                                    strict=True)],
    }
