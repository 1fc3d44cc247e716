"""The Grafana dashboard: valid JSON whose every query names a metric lbd exports."""

from __future__ import annotations

import json
import re
import urllib.request

from tests.fakedp import FakeDataPlane, unique_name
from tests.test_daemon import ROOT, lbd_on, wait_for

DASHBOARD = ROOT / "systemd" / "grafana-marllb.json"


def _exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _exported(body: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", body, re.M)}


def test_dashboard_queries_name_exported_metrics(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and all(p["targets"] for p in dash["panels"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = _exprs(dash)
    wanted = {n for e in exprs for n in re.findall(r"\bmarllb_[a-z0-9_]+", e)}
    assert all(re.search(r"\bmarllb_[a-z0-9_]+", e) for e in exprs)
    # the names the issue asks for are on the dashboard
    assert {"marllb_dataplane_weights_source", "marllb_lbd_policy_fallbacks_total",
            "marllb_dataplane_static_fallbacks_total"} <= wanted
    dp = FakeDataPlane.create(unique_name("graf"), n_servers=3, n_workers=1)
    try:
        with lbd_on(tmp_path, dp, static_weight=[1.0, 2.0, 4.0], active=[1, 2, 3]) as (pub, lbd):
            addr = lbd.status()["metrics"]

            def scrape() -> str:
                return urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()

            def ready() -> str | None:
                b = scrape()
                return b if "marllb_dataplane_clock_rate" in b else None

            body = wait_for(ready, 10, what="clock rate known")
    finally:
        dp.close()
    missing = sorted(wanted - _exported(body))
    assert not missing, f"dashboard queries metrics lbd does not export: {missing}"
    # counters follow the convention
    for line in body.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
