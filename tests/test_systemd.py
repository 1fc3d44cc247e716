"""The systemd unit, default config and tmpfiles entry."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from marllb.daemon.config import load_config

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "lbd.service"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    cur = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], {})
            continue
        assert cur is not None and "=" in line, f"bad unit line {raw!r}"
        k, v = line.split("=", 1)
        cur.setdefault(k.strip(), []).append(v.strip())
    return sections


def test_unit_forbidden_directives_absent():
    svc = parse_unit(UNIT)["Service"]
    for bad in ("MemoryDenyWriteExecute", "RemoveIPC", "DynamicUser"):
        assert bad not in svc, f"{bad}= breaks torch/cffi or deletes the region"


def test_unit_required_hardening_and_notify():
    u = parse_unit(UNIT)
    svc = u["Service"]

    def one(k: str) -> str:
        assert k in svc, f"{k}= missing"
        return svc[k][-1]

    assert one("Type") in ("notify", "notify-reload")
    assert one("WatchdogSec")
    assert "-HUP" in one("ExecReload")
    assert one("User") == "marllb"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("RuntimeDirectory") == "marllb"
    assert one("StateDirectory") == "marllb"
    assert svc["CapabilityBoundingSet"] == [""]
    assert "78" in one("RestartPreventExitStatus")
    assert "/etc/marllb/lbd.toml" in one("ExecStart")
    assert "multi-user.target" in u["Install"]["WantedBy"]


def test_default_config_is_valid_and_matches_unit():
    cfg = load_config(SYSTEMD / "lbd.toml")
    assert cfg.socket.startswith("/run/marllb/")        # the unit's RuntimeDirectory
    assert cfg.tick_ms == 250 and cfg.policy == "sed"
    assert cfg.socket_mode == 0o660


def test_tmpfiles_and_sysusers():
    tmp = (SYSTEMD / "marllb.conf").read_text()
    assert re.search(r"^d /run/marllb 0750 marllb marllb", tmp, re.M)
    assert re.search(r"^u marllb ", (SYSTEMD / "marllb-sysusers.conf").read_text(), re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_analyze_security_exposure():
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze gave no score: {(r.stdout + r.stderr)[-300:]}")
    assert float(m.group(1)) <= 2.5, r.stdout[-2000:]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_analyze_verify_syntax():
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    # verify also checks ExecStart binaries exist (not on a dev machine): only
    # fail on unit-syntax complaints
    bad = [ln for ln in r.stderr.splitlines()
           if "Unknown key" in ln or "Invalid" in ln or "Failed to parse" in ln]
    assert not bad, r.stderr


def test_unprivileged_unit_socket_is_under_its_runtime_directory(monkeypatch):
    """The unit runs as User=marllb with RuntimeDirectory=marllb: lbd's built-in
    default socket there, the shipped config's and lbctl's all agree."""
    import os

    from marllb.daemon.config import default_socket

    svc = parse_unit(UNIT)["Service"]
    assert svc["User"] == ["marllb"]
    rundir = f"/run/{svc['RuntimeDirectory'][0]}"
    monkeypatch.delenv("LBD_SOCKET", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", rundir)
    if os.geteuid() != 0:
        assert default_socket() == f"{rundir}/lbd.sock"
    assert load_config(SYSTEMD / "lbd.toml").socket == f"{rundir}/lbd.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 999)   # as the unit's unprivileged user
    assert default_socket() == f"{rundir}/lbd.sock"
