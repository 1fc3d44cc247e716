"""Scoring: rejected flows counted, CIs, verdicts, the suite report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from marllb.sim import scoring, suite
from marllb.sim.cluster import SimResult


def fake_result(jct, rejected=0, warmup_s=1.0, early=2) -> SimResult:
    """Flows: ``early`` before the warm-up (not scored), then completed ones
    with the given JCTs (s), then ``rejected`` rejected ones."""
    n = early + len(jct) + rejected
    arrival = np.concatenate([np.zeros(early), np.full(len(jct) + rejected, 2.0)])
    done = np.concatenate([np.full(early, 100.0), 2.0 + np.asarray(jct, float),
                           np.full(rejected, np.nan)])
    rej = np.concatenate([np.zeros(early + len(jct), bool), np.ones(rejected, bool)])
    z = np.zeros(0)
    return SimResult(policy="x", arrival=arrival, done=done, server=np.zeros(n, int),
                     lb=np.zeros(n, int), rejected=rej, work=np.ones(n),
                     capacity_cores=np.ones(1), tick_t=z, tick_load=z.reshape(0, 1),
                     tick_weights=z.reshape(0, 1), warmup_s=warmup_s)


def test_rejected_flows_count_at_the_penalty():
    r = fake_result([0.1] * 98, rejected=2)
    m = scoring.score_run(r)
    assert m["flows"] == 100 and m["rejected"] == 2
    assert m["rejected_frac"] == pytest.approx(0.02)
    assert m["jct_mean_ms"] == pytest.approx(100.0)               # completed only
    assert m["ujct_mean_ms"] == pytest.approx((98 * 100 + 2 * 10_000) / 100)
    assert m["ujct_p99_ms"] == pytest.approx(10_000.0)
    # a policy cannot win by rejecting: rejecting the slow flows costs more
    slow = scoring.score_run(fake_result([0.1] * 98 + [3.0, 3.0]))
    assert slow["ujct_mean_ms"] < m["ujct_mean_ms"]
    assert slow["jct_mean_ms"] > m["jct_mean_ms"]


def test_ci95_student_t():
    m, h = scoring.ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == pytest.approx(3.0)
    assert h == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-3)
    assert math.isnan(scoring.ci95([1.0])[1])
    assert scoring.ci95([np.nan, 2.0, 2.0]) == (2.0, 0.0)


def _agg(vals_mean, vals_p99=None):
    return scoring.aggregate([{"ujct_mean_ms": a, "ujct_p99_ms": b, "jct_mean_ms": a,
                               "jct_p99_ms": b, "rejected_frac": 0.0, "rejected": 0.0,
                               "flows": 100.0}
                              for a, b in zip(vals_mean, vals_p99 or vals_mean,
                                              strict=True)])


def test_verdicts_against_best_baseline():
    pols = {"sed": _agg([100, 200, 300, 400, 500]),
            "wrr_latency": _agg([90, 180, 270, 360, 450]),
            "oracle": _agg([50] * 5),
            "good": _agg([81, 162, 243, 324, 405]),     # 10% better than wrr_latency
            "close": _agg([91, 182, 273, 364, 455])}    # 1.1% worse
    right = scoring.verdicts(pols, static_right=True)
    wrong = scoring.verdicts(pols, static_right=False)
    assert "oracle" not in right
    assert right["good"]["ujct_mean_ms"]["vs"] == "wrr_latency"
    assert right["good"]["ujct_mean_ms"]["rel"] == pytest.approx(-0.1)
    assert right["good"]["met"] and right["close"]["met"]
    assert wrong["good"]["met"] and not wrong["close"]["met"]
    assert right["sed"]["met"] is None                 # baselines are not judged
    pols["bad_p99"] = _agg([81, 162, 243, 324, 405], [900, 1800, 2700, 3600, 4500])
    assert not scoring.verdicts(pols, static_right=True)["bad_p99"]["met"]


def test_suite_runs_and_writes_report(tmp_path):
    case = suite.make_case("small", 2)
    short = case.runs[0][0].model_copy(update={"traffic": case.runs[0][0].traffic.model_copy(
        update={"duration_s": 6.0})})
    case.runs = [(short, 0), (short, 1)]
    rep = suite.run_suite([case], ["sed", "wrr_latency", "oracle"])
    paths = suite.write(rep, tmp_path, plots=True)
    data = json.loads((tmp_path / "suite.json").read_text())
    c = data["cases"][0]
    assert c["name"] == "small" and c["static_right"] and c["n_runs"] == 2
    assert set(c["policies"]) == {"sed", "wrr_latency", "oracle"}
    assert len(c["policies"]["sed"]["ujct_mean_ms"]["values"]) == 2
    assert "| wrr_latency |" in (tmp_path / "suite.md").read_text()
    assert (tmp_path / "suite.png").stat().st_size > 0 and len(paths) == 3


def test_shipped_tags_follow_the_files():
    from marllb.sim.scenario import load_scenario

    for name, right in suite.SHIPPED_STATIC_RIGHT.items():
        assert suite.static_right(load_scenario(name)) == right, name
