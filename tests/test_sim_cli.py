"""lbsim eval / dataplane from the command line, and scenario validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from marllb.sim.cli import main
from marllb.sim.scenario import ScenarioError, load_scenario, shipped_names
from marllb.sim.traces import generate, write_trace

BASE_KEYS = {"jct_mean_ms", "jct_p50_ms", "jct_p90_ms", "jct_p99_ms", "rejected_frac",
             "jain_load_over_capacity", "flows"}
# lbsim eval adds user JCT (rejects counted, sim/scoring.py) and its 95% CI over seeds
KEYS = BASE_KEYS | {"ujct_mean_ms", "ujct_p99_ms", "ujct_mean_ms_ci95", "ujct_p99_ms_ci95"}


def test_shipped_scenarios_validate():
    assert {"s1", "s2", "s3", "s4", "small"} <= set(shipped_names())
    s1, s2, s3, s4 = (load_scenario(n) for n in ("s1", "s2", "s3", "s4"))
    caps = [g.cores * g.speed for g in s1.expanded_servers()]
    assert sorted(set(caps)) == [2.0, 4.0]                       # 2:1 capacities
    assert [g.static_weight for g in s1.expanded_servers()] == caps   # correct weights
    assert len({g.static_weight for g in s2.expanded_servers()}) == 1  # all equal
    assert any(g.interference for g in s3.expanded_servers())
    assert s4.edge.n_lbs >= 3 and max(s4.edge.shares()) > 2 * min(s4.edge.shares())
    for s in (s1, s2, s3, s4):
        assert 0.8 <= s.traffic.target_load <= 0.95


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("servers = []\n", "servers"),
        ('[[servers]]\ncores = -1\n', "servers.0.cores"),
        ('[[servers]]\ncores = 1\nwat = 3\n', "servers.0.wat"),
        ('[edge]\nn_lbs = 2\nsplit = [1.0]\n[[servers]]\ncores = 1\n', "split"),
        ('[traffic]\narrivals = "zipf"\n[[servers]]\ncores = 1\n', "traffic.arrivals"),
        ("this is = not toml [", "invalid TOML"),
    ],
)
def test_scenario_errors_are_one_line_naming_the_field(tmp_path, toml, needle):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    msg = str(ei.value)
    assert str(p) in msg and needle in msg and "\n" not in msg


def test_unknown_scenario_name():
    with pytest.raises(ScenarioError, match="not a shipped name"):
        load_scenario("s9")


def test_eval_writes_summary_table_and_plots(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--scenario", "small", "--policy", "sed", "--policy", "oracle",
               "--seeds", "2", "--duration", "8", "--out", str(out), "--quiet"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == {"scenario", "trace", "policies"}
    assert s["scenario"] == "small" and s["trace"] is None
    assert set(s["policies"]) == {"sed", "oracle"}
    for m in s["policies"].values():
        assert set(m) == KEYS
        assert m["flows"] > 0 and m["jct_mean_ms"] > 0
    assert "| sed |" in (out / "summary.md").read_text()
    det = json.loads((out / "details.json").read_text())["policies"]["sed"]
    assert len(det["server_utilisation"]) == 3 and det["msg_in_accepted"] > 0
    for png in ("jct_cdf.png", "load_sed.png", "weights_oracle.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| oracle |" in capsys.readouterr().out


def test_eval_replays_a_trace_scaled_to_the_target_load(tmp_path):
    tr = generate(rate=400.0, duration_s=4.0, seed=9)   # far too fast for 'small'
    p = tmp_path / "trace.tsv"
    write_trace(tr, p)
    out = tmp_path / "ev"
    assert main(["eval", "--scenario", "small", "--policy", "lsq", "--trace", str(p),
                 "--out", str(out), "--quiet", "--no-plots"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["trace"] == str(p)
    m = s["policies"]["lsq"]
    assert m["flows"] == len(tr)
    assert m["rejected_frac"] == 0.0          # scaled to 80 %: no overload
    out2 = tmp_path / "ev2"
    assert main(["eval", "--scenario", "small", "--policy", "lsq", "--trace", str(p),
                 "--no-scale", "--out", str(out2), "--quiet", "--no-plots"]) == 0
    m2 = json.loads((out2 / "summary.json").read_text())["policies"]["lsq"]
    assert m2["jct_mean_ms"] > 3 * m["jct_mean_ms"]   # unscaled: heavily overloaded


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["--scenario", "nope"], 78, "not a shipped name"),
        (["--scenario", "small", "--policy", "qlearn"], 2, "unknown policy 'qlearn'"),
        (["--scenario", "small", "--trace", "MISSING"], 65, "cannot read trace"),
    ],
)
def test_eval_user_errors_are_one_line(tmp_path, capsys, argv, code, needle):
    with pytest.raises(SystemExit) as ei:
        rc = main(["eval", *argv, "--out", str(tmp_path / "x"), "--quiet"])
        raise SystemExit(rc)
    assert ei.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("lbsim: error:") and needle in err and "\n" not in err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "eval" in out and "dataplane" in out


# ------------------------------------------------------------- dataplane

def _lbsim(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "marllb.sim.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_region(name: str, timeout: float = 20.0):
    from marllb.daemon.shm import Region, RegionError

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            return Region.attach(name)
        except RegionError:
            time.sleep(0.05)
    raise AssertionError(f"region {name} never appeared")


def test_dataplane_applies_an_outside_daemons_weights_and_stops_on_sigterm(tmp_path):
    """A stand-in daemon attaches, reads msg_out frames and writes msg_in; the
    data plane accepts them; SIGTERM -> summary written, regions unlinked."""
    from marllb.daemon._core import ffi, lib
    from marllb.daemon.shm import region_exists

    name = f"mlbsim-test-{os.getpid()}"
    out = tmp_path / "dp.json"
    proc = _lbsim("dataplane", "--scenario", "small", "--region", name, "--speed", "20",
                  "--duration", "600", "--out", str(out))
    try:
        reg = _wait_region(name)
        view = ffi.new("mlb_out_view_t *")
        rng = ffi.new("mlb_rng_t *")
        seq = 0
        t_end = time.monotonic() + 2.0
        seen_frames = set()
        while time.monotonic() < t_end:
            try:
                reg.snapshot_view(view, rng)
            except LookupError:
                time.sleep(0.01)
                continue
            seen_frames.add(int(view.meta.frame_no))
            seq += 1
            with reg.write_in() as m:
                m.daemon_gen = 99
                m.msg_seq = seq
                m.dp_gen = reg.generation
                m.dp_t_ns = view.meta.t_ns
                m.ttl_ns = 60 * 10**9     # 3 s of wall time at speed 20
                m.mode = lib.MLB_MODE_SED
                m.n_servers = 3
                for j, w in enumerate((5.0, 1.0, 1.0)):
                    m.weight[j] = w
            time.sleep(0.02)
        reg.snapshot_view(view, rng)
        assert view.meta.weights_source == lib.MLB_SRC_DAEMON
        assert [view.servers[j].weight for j in range(3)] == [5.0, 1.0, 1.0]
        reg.close()
        assert len(seen_frames) > 5
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    d = json.loads(out.read_text())
    assert d["stopped_early"] is True
    assert d["msg_in_accepted"] > 5 and d["msg_in_rejected"] == 0
    assert d["completed"] > 0
    assert set(d["policies"]["dataplane"]) == BASE_KEYS
    assert not region_exists(name) and not region_exists(f"{name}-lb1")


def test_dataplane_refuses_an_existing_region(tmp_path):
    from marllb.daemon.shm import Region

    name = f"mlbsim-exists-{os.getpid()}"
    reg = Region.create(name, 3, 1)
    try:
        proc = _lbsim("dataplane", "--scenario", "small", "--region", name,
                      "--duration", "1", "--out", str(tmp_path / "x.json"))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 69
        last = err.strip().splitlines()[-1]
        assert last.startswith("lbsim: error:") and name in last
        assert "Traceback" not in err
    finally:
        reg.unlink()
        reg.close()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--mode", "oracle"], "--mode: unknown policy 'oracle'"),
     (["--speed", "0"], "--speed must be > 0"),
     (["--scenario", "nope.toml"], "not a shipped name")],
)
def test_dataplane_user_errors_are_one_line(capsys, extra, needle):
    argv = ["dataplane", "--scenario", "small", "--region", f"mlbsim-err-{os.getpid()}",
            *extra]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc in (2, 78)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lbsim: error:") and needle in err


def test_dataplane_runs_to_the_end_without_a_daemon(tmp_path):
    name = f"mlbsim-end-{os.getpid()}"
    out = tmp_path / "dp.json"
    proc = _lbsim("dataplane", "--scenario", "small", "--region", name, "--speed", "50",
                  "--duration", "3", "--out", str(out))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    d = json.loads(out.read_text())
    assert d["stopped_early"] is False and d["unfinished"] == 0
    assert d["completed"] + d["rejected"] == d["policies"]["dataplane"]["flows"]
    assert d["msg_in_accepted"] == 0
    assert np.isfinite(d["policies"]["dataplane"]["jct_mean_ms"])
