"""Real-VPP check of the lb_rl plugin (issue 13), run by check_real_vpp.sh.

Not part of CI: it needs a VPP build or install.  It starts VPP with two
packet-generator interfaces (pg0: clients, pg1: servers with static
neighbours; no NIC, no root network changes), configures one VIP, attaches a
real ``lbd`` to the VIP's region, replays TCP flows from pcaps it writes
itself and checks, from ``show`` output and the pcap captured on pg1:

1. the plugin is loaded and the VIP is in the FIB with the plugin's DPO;
2. flows are steered by weight (phase 1, weights 1:1:1 from lbd);
3. a weight change (server 2 -> 4, mirrored by lbd's ``wcmp`` policy through
   the shared memory) is applied: new flows follow 1:1:4, no existing flow
   moves;
4. FIN/ACK affinity: data, FIN and the ACKs after it reach the flow's server;
5. counters equal the packets sent (per server rows, the VIP's stats-segment
   counter, no lb-rl drops) and the flow counts (completed, open, closing).

Prints one line per check and exits 1 if any fails.  Stdlib only (plus the
project's ``lbd``/``lbctl`` on PATH).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

VIP = "10.0.0.100"
REGION = "mlb-vppcheck"
SERVERS = ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
SERVER_MACS = [f"02:00:00:00:01:{11 + i:02x}" for i in range(len(SERVERS))]
CLIENT_NET = "10.0.0.1/24"
SERVER_NET = "10.0.1.1/24"
SYN, FIN, ACK, PSH = 0x02, 0x01, 0x10, 0x08


# ---------- packets and pcaps (no third-party packages) ----------

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip4(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def _mac(m: str) -> bytes:
    return bytes(int(x, 16) for x in m.split(":"))


def tcp_frame(dmac: str, src: str, sport: int, flags: int, seq: int,
              payload: bytes = b"") -> bytes:
    """Ethernet + IPv4 + TCP client -> VIP:80 with valid checksums."""
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = _ip4(src) + _ip4(VIP) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), seq & 0xFFFF, 0, 64, 6, 0,
                     _ip4(src), _ip4(VIP))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return _mac(dmac) + _mac("02:00:00:00:00:01") + b"\x08\x00" + ip + tcp


def write_pcap(path: Path, frames: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", i // 1000, i % 1000, len(fr), len(fr)))
            f.write(fr)


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(end + "IIII", data[off:off + 16])[2]
        out.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return out


def flow_and_server(frame: bytes) -> tuple[tuple, str, int]:
    """((src, sport), server key, tcp flags) of a captured frame: the server
    is the destination MAC (L2 DSR), the rewritten destination (L3 DSR) or
    the outer destination (GRE4)."""
    ip = frame[14:]
    dst = ".".join(str(b) for b in ip[16:20])
    server = dst
    if ip[9] == 47:                       # GRE4: inner packet after 20 + 4
        ip = ip[24:]
    elif dst == VIP:
        server = ":".join(f"{b:02x}" for b in frame[0:6])
    ihl = (ip[0] & 0xF) * 4
    src = ".".join(str(b) for b in ip[12:16])
    sport = struct.unpack("!H", ip[ihl:ihl + 2])[0]
    return (src, sport), server, ip[ihl + 13]


# ---------- VPP ----------

class Vpp:
    def __init__(self, vpp: str, vppctl: str, work: Path, plugin_dirs: str, workers: int):
        self.vppctl, self.work = vppctl, work
        self.sock = work / "cli.sock"
        conf = f"""
unix {{ nodaemon cli-listen {self.sock} log {work}/vpp.log runtime-dir {work}/run }}
api-segment {{ prefix lbrlcheck }}
socksvr {{ socket-name {work}/api.sock }}
statseg {{ socket-name {work}/stats.sock size 64m page-size 4k }}
memory {{ main-heap-size 1G main-heap-page-size 4k }}
buffers {{ buffers-per-numa 32768 page-size 4k }}
cpu {{ workers {workers} }}
plugins {{ path {plugin_dirs} plugin default {{ disable }} plugin lb_rl_plugin.so {{ enable }} }}
"""
        (work / "startup.conf").write_text(conf)
        self.proc = subprocess.Popen([vpp, "-c", str(work / "startup.conf")],
                                     stdout=open(work / "vpp.out", "w"),
                                     stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.sock.exists() and "vpp" in self.ctl("show version", check=False):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"VPP did not start; see {work}/vpp.out")

    def ctl(self, cmd: str, check: bool = True) -> str:
        r = subprocess.run([self.vppctl, "-s", str(self.sock), *cmd.split()],
                           capture_output=True, text=True, timeout=30)
        out = r.stdout + r.stderr
        # configuration commands print nothing (or a name) when they work
        if check and (r.returncode or re.search(
                r"unknown input|error|fail|invalid|expected|not |no such", out, re.I)):
            raise SystemExit(f"vppctl {cmd!r} failed: {out.strip()}")
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def server_rows(show: str) -> list[dict]:
    rows = []
    for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+(\S+)\s+(up|drain|down)\s+([\d.]+)\s+([\d.]+)"
                         r"\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", show, re.M):
        rows.append({"idx": int(m[1]), "weight": float(m[6]), "active": int(m[7]),
                     "new": int(m[8]), "completed": int(m[9]), "packets": int(m[10])})
    return rows


def replay(v: Vpp, name: str, frames: list[bytes], capture: Path) -> list[bytes]:
    pcap = v.work / f"{name}.pcap"
    write_pcap(pcap, frames)
    v.ctl(f"packet-generator capture pg1 pcap {capture} count 10000000")
    v.ctl(f"packet-generator new name {name} source pg0 pcap {pcap}")
    v.ctl(f"packet-generator enable-stream {name}")
    deadline = time.time() + 30
    while time.time() < deadline and len(read_pcap(capture)) < len(frames):
        time.sleep(0.2)
    time.sleep(0.5)
    v.ctl("packet-generator capture pg1 disable")
    v.ctl(f"packet-generator delete {name}")
    return read_pcap(capture)


# ---------- the check ----------

class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, ok: bool, what: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
        self.failed += not ok


def flows(n: int, base_port: int) -> list[tuple[str, int]]:
    """Clients off-link (192.168.x.y: never the VIP or a server)."""
    return [(f"192.168.{i // 250}.{1 + i % 250}", base_port + i) for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--vpp", required=True, help="the vpp binary")
    ap.add_argument("--vppctl", required=True, help="the vppctl binary")
    ap.add_argument("--plugin-dirs", required=True, help="VPP plugin path (colon-separated)")
    ap.add_argument("--work", required=True, help="scratch directory (emptied)")
    ap.add_argument("--workers", type=int, default=1, help="VPP worker threads")
    ap.add_argument("--encap", default="l2dsr", choices=["l2dsr", "l3dsr", "gre4"])
    ap.add_argument("--flows", type=int, default=300, help="flows per phase")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "run").mkdir(parents=True)
    check = Checks()
    v = Vpp(a.vpp, a.vppctl, work, a.plugin_dirs, a.workers)
    lbd = None
    try:
        print(v.ctl("show version", check=False).strip())
        check("lb_rl" in v.ctl("show plugins", check=False), "plugin lb_rl_plugin.so loaded")
        for pg, net in (("pg0", CLIENT_NET), ("pg1", SERVER_NET)):
            v.ctl(f"create packet-generator interface {pg}")
            v.ctl(f"set interface ip address {pg} {net}")
            v.ctl(f"set interface state {pg} up")
        for ip, mac in zip(SERVERS, SERVER_MACS, strict=True):
            v.ctl(f"set ip neighbor pg1 {ip} {mac} static")
        m = re.search(r"Ethernet address (\S+)", v.ctl("show hardware-interfaces pg0", check=False))
        dmac = m[1] if m else "ff:ff:ff:ff:ff:ff"
        encap = {"l2dsr": "", "l3dsr": " encap l3dsr dscp 10",
                 "gre4": " encap gre4 src 10.0.1.1"}[a.encap]
        v.ctl(f"lb rl vip {VIP} region {REGION} servers {len(SERVERS)} mode wcmp "
              f"flows 8192 publish-ms 100 timer-ms 10{encap}")
        for i, ip in enumerate(SERVERS):
            v.ctl(f"lb rl server {i} address {ip} weight 1")
        fib = v.ctl(f"show ip fib {VIP}/32", check=False)
        check("lb-rl" in fib, f"VIP {VIP}/32 in the FIB with the lb-rl DPO")
        # bad numbers are refused and change nothing
        bad = v.ctl(f"lb rl vip {VIP} region {REGION} servers 3 timer-ms 0", check=False)
        check("timer-ms" in bad and "timer 10 ms" in v.ctl("show lb rl", check=False),
              "timer-ms 0 refused, timer unchanged")

        lbd = subprocess.Popen(["lbd", "--region", REGION, "--policy", "wcmp", "--tick-ms",
                                "100", "--socket", str(work / "lbd.sock"), "--metrics", ""],
                               stdout=open(work / "lbd.out", "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline and "daemon weights" not in v.ctl("show lb rl", check=False):
            time.sleep(0.2)
        check("daemon weights" in v.ctl("show lb rl", check=False),
              "lbd attached: daemon weights in force")

        old, new = flows(a.flows, 20000), flows(2 * a.flows, 40000)
        # phase 1: SYN + 2 data per flow, weights 1:1:1
        p1 = []
        for src, sport in old:
            p1.append(tcp_frame(dmac, src, sport, SYN, 1000))
        for k in range(2):
            p1 += [tcp_frame(dmac, s, p, ACK | PSH, 1001 + 100 * k, b"x" * 100) for s, p in old]
        out1 = replay(v, "phase1", p1, work / "out1.pcap")
        check(len(out1) == len(p1), f"phase 1: {len(out1)} of {len(p1)} packets forwarded")
        home = {}
        for fr in out1:
            f, srv, _ = flow_and_server(fr)
            home.setdefault(f, set()).add(srv)
        share1 = Counter(next(iter(s)) for s in home.values())
        check(len(share1) == 3 and min(share1.values()) > 0.2 * a.flows,
              f"phase 1 steered by weight 1:1:1: {dict(share1)}")

        # the weight change: static weight of server 2 -> 4, mirrored by lbd
        v.ctl("lb rl server 2 weight 4")
        deadline = time.time() + 30
        while time.time() < deadline:
            rows = server_rows(v.ctl(f"show lb rl {VIP} verbose", check=False))
            if rows and rows[2]["weight"] > 3 * rows[0]["weight"] > 0:
                break
            time.sleep(0.2)
        show = v.ctl(f"show lb rl {VIP} verbose", check=False)
        rows = server_rows(show)
        check("daemon weights" in show and rows and rows[2]["weight"] > 3 * rows[0]["weight"],
              f"weight change applied from lbd: {[r['weight'] for r in rows]}")

        # phase 2: old flows data, FIN, then ACKs after FIN; new flows SYN + data
        p2 = [tcp_frame(dmac, s, p, ACK | PSH, 1201, b"y" * 100) for s, p in old]
        p2 += [tcp_frame(dmac, s, p, FIN | ACK, 1301) for s, p in old]
        p2 += [tcp_frame(dmac, s, p, ACK, 1302) for s, p in old]
        p2 += [tcp_frame(dmac, s, p, SYN, 5000) for s, p in new]
        p2 += [tcp_frame(dmac, s, p, ACK | PSH, 5001, b"z" * 100) for s, p in new]
        out2 = replay(v, "phase2", p2, work / "out2.pcap")
        check(len(out2) == len(p2), f"phase 2: {len(out2)} of {len(p2)} packets forwarded")
        seen: dict = defaultdict(set)
        after_fin_ok = True
        for fr in out1 + out2:
            f, srv, flags = flow_and_server(fr)
            seen[f].add(srv)
        for fr in out2:
            f, srv, flags = flow_and_server(fr)
            if f in home and flags == ACK and srv not in home[f]:
                after_fin_ok = False
        moved = sum(1 for f in home if len(seen[f]) != 1)
        check(moved == 0, f"no existing flow moved across the weight change ({moved} moved)")
        check(after_fin_ok, "FIN/ACK affinity: the ACKs after FIN reach the flow's server")
        share2 = Counter(next(iter(seen[f])) for f in new if len(seen[f]) == 1)
        top = max(share2.values()) / max(1, sum(share2.values()))
        check(0.5 < top < 0.85, f"new flows follow 1:1:4: {dict(share2)} (top share {top:.2f})")

        # counters
        time.sleep(0.5)
        show = v.ctl(f"show lb rl {VIP} verbose", check=False)
        rows = server_rows(show)
        sent = len(p1) + len(p2)
        check(sum(r["packets"] for r in rows) == sent,
              f"per-server packets {sum(r['packets'] for r in rows)} == sent {sent}")
        m = re.search(r"steered (\d+) pkts", show)
        check(bool(m) and int(m[1]) == sent, f"stats-segment VIP counter {m and m[1]} == {sent}")
        check(sum(r["completed"] for r in rows) == a.flows and
              sum(r["active"] for r in rows) == 2 * a.flows,
              f"completed {sum(r['completed'] for r in rows)} == {a.flows}, "
              f"active {sum(r['active'] for r in rows)} == {2 * a.flows}")
        m = re.search(r"flows (\d+) open, (\d+) closing", show)
        check(bool(m) and int(m[2]) == a.flows, f"closing entries kept after FIN: {m and m[2]}")
        errs = v.ctl("show errors", check=False)
        check("no usable server" not in errs, "no lb-rl drops counted")
        print(show)
    finally:
        if lbd:
            lbd.terminate()
            lbd.wait(10)
        v.stop()
    print(f"{'ALL PASSED' if not check.failed else f'{check.failed} FAILED'} (work dir {work})")
    return 1 if check.failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
