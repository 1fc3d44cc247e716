"""Traces: loader formats and errors, generators, writing, time-scaling."""

from __future__ import annotations

import numpy as np
import pytest

from marllb.sim.traces import (
    DEFAULT_SPEED,
    Trace,
    TraceError,
    generate,
    load_trace,
    write_trace,
)


def test_load_testbed_tsv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time\tquery\n0.1\t/dummy.php/?n=100\n0.25\t/dummy.php/?n=3670000\n")
    tr = load_trace(p)
    assert tr.times.tolist() == [0.1, 0.25]
    assert tr.sizes.tolist() == [100.0, 3670000.0]


def test_load_plain_csv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time,size\n0,5\n1.5,7.5\n\n2,1e6\n")
    tr = load_trace(p)
    assert tr.times.tolist() == [0.0, 1.5, 2.0]
    assert tr.sizes.tolist() == [5.0, 7.5, 1e6]


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("time\tquery\n0.1\t/dummy.php/?n=10\n0.2\t/index.html\n", 3, "bad query"),
        ("time\tquery\n0.1\t/dummy.php/?n=10\nabc\t/dummy.php/?n=1\n", 3, "bad time"),
        ("time\tquery\n0.5\t/dummy.php/?n=10\n0.2\t/dummy.php/?n=1\n", 3, "backwards"),
        ("time\tquery\n0.1\t/dummy.php/?n=0\n", 2, "size must be"),
        ("time,size\n1,2\n2,3,4\n", 3, "expected 2 fields"),
        ("time,size\n1,2\n2,-3\n", 3, "size must be"),
        ("time,size\n1,2\nnan,3\n", 3, "time must be"),
        ("when,what\n1,2\n", 1, "unknown header"),
        ("", 1, "empty trace"),
        ("time,size\n", 1, "no requests"),
    ],
)
def test_loader_errors_name_file_and_line(tmp_path, body, line, what):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(TraceError) as ei:
        load_trace(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    assert what in msg
    assert "\n" not in msg


def test_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "nope.csv")


@pytest.mark.parametrize("arrivals", ["poisson", "bursty", "diurnal"])
@pytest.mark.parametrize("sizes", ["exponential", "lognormal", "pareto"])
def test_generators_are_seedable_and_roundtrip(tmp_path, arrivals, sizes):
    kw = dict(arrivals=arrivals, sizes=sizes, rate=200.0, duration_s=30.0,
              period_s=10.0, mean_period_s=1.0)
    a = generate(seed=5, **kw)
    b = generate(seed=5, **kw)
    c = generate(seed=6, **kw)
    assert np.array_equal(a.times, b.times) and np.array_equal(a.sizes, b.sizes)
    assert not np.array_equal(a.times[:50], c.times[:50])
    assert np.all(np.diff(a.times) >= 0) and a.times[-1] < 30.0
    assert np.all(a.sizes >= 1)
    # mean rate within 25% (bursty/diurnal are noisy over 30 s), mean size within 25%
    assert len(a) / 30.0 == pytest.approx(200.0, rel=0.25)
    assert a.sizes.mean() == pytest.approx(3.67e6, rel=0.25)
    p = tmp_path / "gen.tsv"
    write_trace(a, p)
    assert p.read_text().startswith("time\tquery\n0.")
    back = load_trace(p)
    assert np.array_equal(back.times, a.times)
    assert np.array_equal(back.sizes, a.sizes)


def test_poisson_exponential_statistics():
    tr = generate(rate=1000.0, duration_s=100.0, seed=1)
    gaps = np.diff(tr.times)
    assert gaps.mean() == pytest.approx(1e-3, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)   # CV of exponential
    assert tr.sizes.std() / tr.sizes.mean() == pytest.approx(1.0, abs=0.03)


def test_bursty_is_burstier_than_poisson():
    p = generate(arrivals="poisson", rate=500.0, duration_s=200.0, seed=2)
    b = generate(arrivals="bursty", rate=500.0, duration_s=200.0, seed=2, burst_ratio=8.0)
    counts = lambda tr: np.histogram(tr.times, bins=200, range=(0, 200))[0]  # noqa: E731
    cp, cb = counts(p), counts(b)
    assert cb.var() / cb.mean() > 3 * cp.var() / cp.mean()


def test_time_scaling_hits_target_load():
    tr = generate(rate=300.0, duration_s=50.0, seed=3)
    cap = 20.0
    before = tr.offered_load(cap)
    scaled = tr.scaled_to_load(0.85, cap)
    assert scaled.offered_load(cap) == pytest.approx(0.85, rel=1e-9)
    assert np.array_equal(scaled.sizes, tr.sizes)
    assert scaled.span_s == pytest.approx(tr.span_s * before / 0.85)
    # load = rate x mean work / capacity
    expect = 300.0 * tr.sizes.mean() / DEFAULT_SPEED / cap
    assert before == pytest.approx(expect, rel=0.05)


def test_trace_shape_checked():
    with pytest.raises(ValueError):
        Trace(np.zeros(3), np.zeros(2))
