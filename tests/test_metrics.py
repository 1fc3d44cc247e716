"""SLA and fairness metrics (marllb.sim.metrics) on hand-computed examples, and in eval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from marllb.sim import metrics as m
from marllb.sim.cluster import SimResult


def _result(**kw: object) -> SimResult:
    base = dict(policy="x", arrival=np.zeros(0), done=np.zeros(0), server=np.zeros(0, int),
                lb=np.zeros(0, int), rejected=np.zeros(0, bool), work=np.zeros(0),
                capacity_cores=np.ones(2), tick_t=np.zeros(0), tick_load=np.zeros((0, 2)),
                tick_weights=np.zeros((0, 2)))
    base.update(kw)
    return SimResult(**base)  # type: ignore[arg-type]


def test_sla_violation_share_counts_late_rejected_and_unfinished() -> None:
    arrival = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    # JCTs: 0.5 (ok), 1.0 (== target: ok), 1.5 (late), rejected, ok 0.2, warm-up-excluded
    done = np.array([0.5, 2.0, 3.5, np.nan, 4.2, 9.0])
    assert m.sla_violation_frac(arrival, done, 1.0) == pytest.approx(3 / 6)
    # warm-up: the first flow (a met one) is not scored -> 3 violations of 5
    assert m.sla_violation_frac(arrival, done, 1.0, warmup_s=0.5) == pytest.approx(3 / 5)
    assert m.sla_violation_frac(arrival, done, 10.0) == pytest.approx(1 / 6)
    assert m.sla_violation_frac(arrival[:0], done[:0], 1.0) == 0.0


def test_default_target_is_three_mean_services() -> None:
    assert m.default_sla_target_s(np.array([0.1, 0.2, 0.3])) == pytest.approx(0.6)


def test_jain_cv_maxmin_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0])
    assert m.jain(x) == pytest.approx(36 / (3 * 14))
    assert m.cv(x) == pytest.approx(math.sqrt(2 / 3) / 2)
    assert m.max_min_ratio(x) == pytest.approx(3.0)
    even = np.array([4.0, 4.0, 4.0, 4.0])
    assert (m.jain(even), m.cv(even), m.max_min_ratio(even)) == (1.0, 0.0, 1.0)
    one = np.array([5.0, 0.0, 0.0, 0.0])
    assert m.jain(one) == pytest.approx(0.25)
    assert m.cv(one) == pytest.approx(math.sqrt(3))
    assert m.max_min_ratio(one) == math.inf
    zero = np.zeros(3)
    assert (m.jain(zero), m.cv(zero), m.max_min_ratio(zero)) == (1.0, 0.0, 1.0)


def test_sla_fairness_of_a_result() -> None:
    # two servers, capacity 2 and 1 core; server 0 serves 4 core-s, server 1 serves 1
    # core-s and a rejected flow's work is not counted as served
    res = _result(arrival=np.array([0.0, 0.0, 1.0, 2.0]),
                  done=np.array([1.0, 3.0, 1.5, np.nan]),
                  server=np.array([0, 0, 1, -1]), rejected=np.array([0, 0, 0, 1], bool),
                  work=np.array([1.0, 3.0, 1.0, 3.0]), capacity_cores=np.array([2.0, 1.0]))
    got = m.sla_fairness(res)
    # default target: 3 x mean work (2.0 s) = 6 s: only the rejected flow misses it
    assert got["sla_target_ms"] == pytest.approx(6000.0)
    assert got["sla_violation_frac"] == pytest.approx(0.25)
    x = np.array([2.0, 1.0])  # 4/2, 1/1
    assert got["cv_load_over_capacity"] == pytest.approx(x.std() / x.mean())
    assert got["util_max_min_ratio"] == pytest.approx(2.0)
    # settable target: 1 s -> the 3 s flow is late too
    assert m.sla_fairness(res, sla_target_s=1.0)["sla_violation_frac"] == pytest.approx(0.5)
    # Jain from the simulator's own summary agrees with metrics.jain on the same x
    assert res.summary()["jain_load_over_capacity"] == pytest.approx(m.jain(x))


def test_eval_report_has_the_metrics_and_plot(tmp_path) -> None:  # noqa: ANN001
    from marllb.sim.cli import main

    rc = main(["eval", "--scenario", "small", "--duration", "4", "--policy", "sed",
               "--policy", "ecmp", "--out", str(tmp_path), "--quiet",
               "--sla-target-ms", "500"])
    assert rc == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    for pol in ("sed", "ecmp"):
        p = s["policies"][pol]
        assert p["sla_target_ms"] == pytest.approx(500.0)
        assert 0.0 <= p["sla_violation_frac"] <= 1.0
        assert p["cv_load_over_capacity"] >= 0.0
        assert p["util_max_min_ratio"] >= 1.0
    md = (tmp_path / "summary.md").read_text()
    assert "SLA viol." in md and "CV load/cap" in md
    assert (tmp_path / "sla_fairness.png").stat().st_size > 1000


def test_eval_rejects_bad_sla_target(tmp_path, capsys) -> None:  # noqa: ANN001
    from marllb.sim.cli import main

    rc = main(["eval", "--scenario", "small", "--policy", "sed", "--out", str(tmp_path),
               "--sla-target-ms", "0"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lbsim: error: --sla-target-ms must be > 0, got 0.0"]
