"""Defects 2 and 3: configs that passed --check-config and then crashed lbd
(inf/huge TTL, inf weights, a 1e-9 ms tick, bad region names, non-UTF-8), a
SIGHUP or `lbctl reload` with a bad file, and --check-config passing a
checkpoint that does not exist."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from marllb.daemon.config import MAX_TTL_MS, ConfigError, load_config
from tests.fakedp import FakeDataPlane, unique_name
from tests.test_daemon import Lbd, Publisher, wait_for

ROOT = Path(__file__).resolve().parent.parent

BAD = [
    ("ttl_ms = inf\n", "ttl_ms"),
    ("ttl_ms = 1e300\n", "ttl_ms"),
    ("ttl_ms = 1e12\n", "ttl_ms"),
    ("ttl_ms = nan\n", "ttl_ms"),
    ("w_min = inf\n", "w_min"),
    ("w_max = inf\n", "w_max"),
    ("w_max = 1e300\n", "w_max"),
    ("w_min = nan\n", "w_min"),
    ("tick_ms = 1e-9\n", "tick_ms"),
    ("tick_ms = true\n", "tick_ms"),
    ("w_min = 1e-320\n", "w_min"),
    ("tick_ms = inf\n", "tick_ms"),
    ("decay_per_s = nan\n", "decay_per_s"),
    ("stale_after_ms = inf\n", "stale_after_ms"),
    ('region = ".."\n', "region"),
    ('region = "."\n', "region"),
    ('region = "a\\u0000b"\n', "region"),
    ('region = "a/b"\n', "region"),
    ('socket = "/tmp/x\\u0000y"\n', "socket"),
    ('checkpoint = "a\\u0000b"\n', "checkpoint"),
]


def run_lbd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marllb.daemon.lbd", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(("text", "field"), BAD)
def test_out_of_range_values_refused_naming_the_field(tmp_path: Path, text: str,
                                                      field: str) -> None:
    p = tmp_path / "lbd.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"^config {p}: {field}: "):
        load_config(p)


def test_devices_and_huge_files_are_not_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_ttl_never_above_the_data_plane_cap() -> None:
    cfg = load_config(None, {"tick_ms": 5000.0})
    assert cfg.ttl_ns <= MAX_TTL_MS * 1e6


def test_check_config_exits_78_for_bad_values(tmp_path: Path) -> None:
    p = tmp_path / "lbd.toml"
    p.write_text("w_min = inf\n")
    r = run_lbd("--config", str(p), "--check-config")
    assert r.returncode == 78 and "w_min" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_lbd("--tick-ms", "1e-9", "--check-config")
    assert r.returncode == 78 and "tick_ms" in r.stderr, r.stderr
    p.write_bytes(b'policy = "sed"\nregion = "vip\xff\xfe"\n')
    r = run_lbd("--config", str(p), "--check-config")
    assert r.returncode == 78 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr
    # and at start, not only with --check-config
    r = run_lbd("--config", str(p), "--socket", "")
    assert r.returncode == 78 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_check_config_loads_the_checkpoint(tmp_path: Path) -> None:
    r = run_lbd("--policy", "qmix", "--checkpoint", str(tmp_path / "nope"), "--check-config")
    assert r.returncode == 78 and "no such file" in r.stderr, r.stderr
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    r = run_lbd("--policy", "qmix", "--checkpoint", str(tmp_path / "bad"), "--check-config")
    assert r.returncode == 78 and "unreadable tensors" in r.stderr, r.stderr
    r = run_lbd("--policy", "qmix", "--check-config")          # the shipped one loads
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy"] == "qmix"


def test_sighup_and_reload_with_bad_config_keep_lbd_running(tmp_path: Path) -> None:
    cfg = tmp_path / "lbd.toml"
    cfg.write_text("w_max = 8\n")
    dp = FakeDataPlane.create(unique_name("cfg"), 4)
    try:
        pub = Publisher(dp)
        lbd = Lbd(tmp_path, dp.name, config=cfg)
        try:
            lbd.wait_ready()
            cfg.write_bytes(b"w_max = 8\n# \xff\xfe not utf-8\n")
            lbd.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: lbd.status()["reload_failures"] >= 1, what="failed SIGHUP reload")
            st = lbd.status()
            assert lbd.proc.poll() is None
            assert "not UTF-8" in st["last_reload"]["error"]
            assert "not UTF-8" in st["config_error"]
            assert st["w_max"] == 8
            cfg.write_text("w_min = inf\n")
            r = lbd.lbctl("reload")
            assert r.returncode != 0 and "w_min" in (r.stdout + r.stderr)
            wait_for(lambda: lbd.status()["reload_failures"] >= 2, what="failed lbctl reload")
            before = lbd.status()["ticks"]
            wait_for(lambda: lbd.status()["ticks"] > before + 5, what="ticks after reload")
            st = lbd.status()
            assert lbd.proc.poll() is None and st["w_min"] == 0.1 and st["state"] == "running"
            assert "w_min" in st["config_error"]
        finally:
            pub.stop()
            lbd.stop()
    finally:
        dp.close()
