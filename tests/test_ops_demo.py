"""The demo's verdict, table and plots, computed from given numbers (no processes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marllb.sim import demo


def _runs(means: list[float], p99s: list[float]) -> list[dict[str, float]]:
    return [{"jct_mean_ms": m, "jct_p99_ms": p, "rejected_frac": 0.0, "flows": 100}
            for m, p in zip(means, p99s, strict=True)]


def test_paired_ci_is_a_t_interval_over_per_seed_changes():
    m, lo, hi = demo.paired_ci([80, 90, 85], [100, 100, 100])
    assert m == pytest.approx(-15.0)
    half = 4.30 * np.std([-20, -10, -15], ddof=1) / math.sqrt(3)
    assert (lo, hi) == pytest.approx((-15 - half, -15 + half))
    m, lo, hi = demo.paired_ci([80], [100])
    assert m == pytest.approx(-20.0) and math.isnan(lo) and math.isnan(hi)


def test_verdict_states_direction_seeds_ci_and_live_run():
    per = {"qmix": _runs([80, 82, 84, 81, 83], [70, 75, 72, 74, 73]),
           "sed": _runs([100] * 5, [100] * 5)}
    line = demo.verdict("qmix", "sed", per, {"jct_mean_ms": 90, "jct_p99_ms": 50},
                        {"jct_mean_ms": 100, "jct_p99_ms": 100}, 0)
    assert line.startswith("verdict: qmix vs SED: JCT mean -18% (95% CI")
    assert "p99 -27%" in line and "5 seed(s)" in line and "-> better" in line
    assert "this live run (seed 0): mean -10%, p99 -50%" in line
    per["qmix"] = _runs([90, 110, 95, 105, 100], [100] * 5)
    assert "no clear difference" in demo.verdict("qmix", "sed", per, None, None, 0)
    per["qmix"] = _runs([120, 121, 119, 122, 118], [130] * 5)
    assert "-> worse" in demo.verdict("qmix", "sed", per, None, None, 0)


def test_table_has_units_and_percentages():
    s = {"jct_mean_ms": 80.0, "jct_p99_ms": 150.0, "rejected_frac": 0.01, "flows": 10}
    b = {"jct_mean_ms": 100.0, "jct_p99_ms": 200.0, "rejected_frac": 0.0, "flows": 10}
    t = demo.table([("qmix", s, b), ("sed", b, b)], "sed")
    assert "(ms)" in t and "vs SED" in t
    row = t.splitlines()[2]
    assert "-20.0%" in row and "-25.0%" in row and "1.00%" in row


def test_plots_are_written_and_identical_runs_share_a_curve(tmp_path):
    rng = np.random.default_rng(0)
    same = rng.exponential(0.3, 500)
    p = demo.plot_jct({"lbd qmix (live)": rng.exponential(0.25, 500),
                       "sed (simulator)": same, "lsq (simulator)": same.copy()},
                      tmp_path / "jct.png", "t")
    assert p.stat().st_size > 10_000
    samples = [{"wall_s": t * 0.5, "lb": lb, "in_force": [1.0, 2.0, 4.0],
                "published": [1.0, 2.0, 4.0]} for t in range(20) for lb in (0, 1)]
    w = demo.plot_weights(samples, 4.0, [2, 2, 4], tmp_path / "w.png", "t")
    assert w is not None and w.stat().st_size > 10_000
    assert demo.plot_weights([], 4.0, [], tmp_path / "none.png", "t") is None
