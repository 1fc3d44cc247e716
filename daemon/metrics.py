"""Prometheus metrics over HTTP: a custom collector over the SAME status
snapshot as ``lbctl status`` (nothing is counted twice or on the tick path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

from marllb.daemon.status import build_status

STATES = ("running", "waiting", "degraded")


class LbdCollector:
    def __init__(self, daemon: Any) -> None:
        self.lbd = daemon

    def collect(self) -> Iterator[Any]:
        d = self.lbd
        st = build_status(d)
        p = "marllb_lbd_"

        g = GaugeMetricFamily(p + "state", "1 for the daemon's current state", labels=["state"])
        for s in STATES:
            g.add_metric([s], 1.0 if st["state"] == s else 0.0)
        yield g
        yield GaugeMetricFamily(p + "up_seconds", "seconds since the daemon started",
                                value=st["uptime_s"])
        for name, key, doc in (
            ("ticks", "ticks", "ticks that read a frame"),
            ("overruns", "overruns", "ticks skipped because a tick overran its deadline"),
            ("frames_seen", "frames_seen", "distinct msg_out frames seen"),
            ("publishes", "publishes", "msg_in messages published"),
            ("fallbacks", "fallback_events", "switches from the policy to its fallback"),
            ("fallback_ticks", "fallback_ticks", "ticks decided by the fallback heuristic"),
            ("reattaches", "reattaches", "re-attaches after a data-plane restart"),
            ("reloads", "reloads", "successful reloads"),
            ("reload_failures", "reload_failures", "rejected reloads (old config kept)"),
            ("snapshot_busy", "snapshot_busy", "ticks with no consistent snapshot"),
            ("sanitized_frames", "sanitized_frames", "ticks whose frame had garbage values"),
        ):
            yield CounterMetricFamily(p + name, doc, value=st[key])
        fb = GaugeMetricFamily(p + "fallback_active", "1 while the fallback heuristic decides",
                               labels=["policy", "fallback"])
        fb.add_metric([st["policy"], st["fallback_policy"]],
                      1.0 if st["fallback_reason"] else 0.0)
        yield fb
        yield GaugeMetricFamily(p + "hold", "1 while weights are frozen", value=float(st["hold"]))
        yield GaugeMetricFamily(p + "tick_interval_seconds", "configured tick interval",
                                value=st["tick_ms"] / 1e3)
        yield GaugeMetricFamily(p + "tick_rate_hz", "achieved tick rate", value=st["achieved_hz"])
        if st["last_frame_age_s"] is not None:
            yield GaugeMetricFamily(p + "last_frame_age_seconds",
                                    "time since a new msg_out frame", value=st["last_frame_age_s"])
        if st["last_publish_age_s"] is not None:
            yield GaugeMetricFamily(p + "last_publish_age_seconds",
                                    "time since the last msg_in publish",
                                    value=st["last_publish_age_s"])
        buckets, total = d.times.histogram()
        yield HistogramMetricFamily(p + "tick_seconds", "whole-tick latency",
                                    buckets=buckets, sum_value=total)
        stage = GaugeMetricFamily(p + "stage_seconds", "recent stage latency quantiles",
                                  labels=["stage", "quantile"])
        for s, q in st["stages"].items():
            stage.add_metric([s, "0.5"], q["p50_us"] / 1e6)
            stage.add_metric([s, "0.99"], q["p99_us"] / 1e6)
        yield stage

        per = {
            "weight": ("weight", "weight published for the server"),
            "weight_in_force": ("weight_in_force", "weight the data plane reports in force"),
            "active_flows": ("active_flows", "active flows"),
            "new_flows_per_second": ("new_flows_per_s", "new flows per second"),
            "fct_mean_seconds": ("fct_mean_ms", "mean flow completion time (reservoir)"),
            "fct_p90_seconds": ("fct_p90_ms", "p90 flow completion time (reservoir)"),
        }
        for mname, (key, doc) in per.items():
            fam = GaugeMetricFamily(p + "server_" + mname, doc, labels=["server", "state"])
            scale = 1e-3 if key.endswith("_ms") else 1.0
            for row in st["servers"]:
                fam.add_metric([str(row["id"]), row["state"]], row[key] * scale)
            yield fam


def start_metrics(daemon: Any, host: str, port: int) -> tuple[Any, str]:
    """Serve /metrics; returns (server, "host:port" actually bound)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LbdCollector(daemon))
    server, _thread = start_http_server(port, addr=host, registry=reg)
    bound_host, bound_port = server.server_address[:2]
    return server, f"{bound_host}:{bound_port}"
