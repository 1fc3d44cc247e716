"""Prometheus metrics over HTTP: a custom collector over the SAME status
snapshot as ``lbctl status`` (nothing is counted twice or on the tick path).

Names follow Prometheus conventions: counters end in ``_total``, units in the
name (``_seconds``), one meaning per name.  ``marllb_lbd_*`` is what the
daemon does; ``marllb_dataplane_*`` is what the data plane reports in its
msg_out frames (so "fallbacks" of lbd's policy to its heuristic and the data
plane's fallbacks to its static weights are two different names).
systemd/grafana-marllb.json is a dashboard over these."""

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
SOURCES = {0: "static", 1: "daemon"}
MSG_IN = (("accepted", "msg_in_accepted"), ("rejected_stale", "msg_in_rej_stale"),
          ("rejected_generation", "msg_in_rej_gen"), ("rejected_invalid", "msg_in_rej_invalid"))


class LbdCollector:
    def __init__(self, daemon: Any) -> None:
        self.lbd = daemon

    def collect(self) -> Iterator[Any]:
        d = self.lbd
        st = build_status(d)
        p = "marllb_lbd_"

        g = GaugeMetricFamily(p + "state", "1 for the daemon's current state", labels=["state"])
        for s in STATES + tuple(x for x in (st["state"],) if x not in STATES):
            g.add_metric([s], 1.0 if st["state"] == s else 0.0)
        yield g
        yield from self._dataplane(st)
        yield from self._canary(st)
        yield GaugeMetricFamily(p + "up_seconds", "seconds since the daemon started",
                                value=st["uptime_s"])
        for name, key, doc in (
            ("ticks", "ticks", "ticks that read a frame"),
            ("overruns", "overruns", "ticks skipped because a tick overran its deadline"),
            ("frames_seen", "frames_seen", "distinct msg_out frames seen"),
            ("publishes", "publishes", "msg_in messages published"),
            ("policy_fallbacks", "fallback_events",
             "switches from lbd's policy to its fallback heuristic"),
            ("policy_fallback_ticks", "fallback_ticks", "ticks decided by the fallback heuristic"),
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
        names = getattr(d.cfg, "server_names", {})
        for mname, (key, doc) in per.items():
            fam = GaugeMetricFamily(p + "server_" + mname, doc, labels=["server", "name", "state"])
            scale = 1e-3 if key.endswith("_ms") else 1.0
            for row in st["servers"]:
                fam.add_metric([str(row["id"]), names.get(row["id"], ""), row["state"]],
                               row[key] * scale)
            yield fam

    def _canary(self, st: dict[str, Any]) -> Iterator[Any]:
        """Per-policy outcome of this LB (the canary guard's windows) and its verdict."""
        c = st.get("canary")
        if not c:
            return
        v = GaugeMetricFamily("marllb_lbd_canary_verdict", "1 for this LB's canary verdict",
                              labels=["role", "candidate", "incumbent", "verdict"])
        for verdict in ("running", "rolled_back", "promoted", "inconclusive"):
            v.add_metric([c["role"], c["candidate"], c["incumbent"], verdict],
                         1.0 if c["verdict"] == verdict else 0.0)
        yield v
        if c.get("last_window"):
            o = GaugeMetricFamily("marllb_lbd_policy_outcome_fct_seconds",
                                  "flow-weighted FCT of this LB's last canary window",
                                  labels=["policy", "stat"])
            o.add_metric([c["serving"], "mean"], c["last_window"][0])
            o.add_metric([c["serving"], "p90"], c["last_window"][1])
            yield o
        if c.get("candidate_vs_incumbent_pct") is not None:
            yield GaugeMetricFamily("marllb_lbd_canary_candidate_vs_incumbent_ratio",
                                    "candidate FCT / incumbent FCT - 1 over compared windows",
                                    value=c["candidate_vs_incumbent_pct"] / 100)

    def _dataplane(self, st: dict[str, Any]) -> Iterator[Any]:
        """What the data plane says in its frames, and whether lbd's weights are in force."""
        d = self.lbd
        p = "marllb_dataplane_"
        dp = st.get("dp")
        wif = st.get("weights_in_force")
        if wif is None and dp:
            wif = dp.get("weights_source") == 1
        if wif is not None:
            yield GaugeMetricFamily("marllb_lbd_weights_in_force",
                                    "1 while the data plane uses lbd's weights",
                                    value=float(bool(wif)))
        clock = getattr(getattr(d, "pipeline", None), "dp_clock", None)
        if clock is not None and clock.last_ttl_ns:
            yield GaugeMetricFamily("marllb_lbd_weights_ttl_seconds",
                                    "TTL of the published weights, data-plane seconds",
                                    value=clock.last_ttl_ns / 1e9)
        if clock is not None and clock.rate is not None:
            yield GaugeMetricFamily(p + "clock_rate",
                                    "data-plane seconds per wall second (1 on real hardware)",
                                    value=clock.rate)
        if not dp:
            return
        src = GaugeMetricFamily(p + "weights_source",
                                "1 for the weights the data plane uses: the daemon's or its "
                                "static ones", labels=["source"])
        for code, name in SOURCES.items():
            src.add_metric([name], 1.0 if dp.get("weights_source") == code else 0.0)
        yield src
        yield CounterMetricFamily(p + "static_fallbacks",
                                  "times the data plane dropped the daemon's weights for its "
                                  "static ones (TTL expired, rejected msg_in)",
                                  value=dp["fallbacks"])
        mi = CounterMetricFamily(p + "msg_in", "msg_in messages by outcome", labels=["result"])
        for label, key in MSG_IN:
            mi.add_metric([label], dp[key])
        yield mi


def start_metrics(daemon: Any, host: str, port: int) -> tuple[Any, str]:
    """Serve /metrics; returns (server, "host:port" actually bound)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LbdCollector(daemon))
    server, _thread = start_http_server(port, addr=host, registry=reg)
    bound_host, bound_port = server.server_address[:2]
    return server, f"{bound_host}:{bound_port}"
