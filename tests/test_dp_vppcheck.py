"""The real-VPP check's own pieces (vpp_plugin/check_real_vpp.py) that run
without VPP: frames with valid checksums, pcap round trip, the capture
parser for each encapsulation, and the parser of `show lb rl verbose`."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_real_vpp",
                                              ROOT / "vpp_plugin" / "check_real_vpp.py")
chk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chk)


def test_frames_have_valid_checksums_and_parse_back(tmp_path: Path) -> None:
    fr = chk.tcp_frame("02:fe:00:00:00:01", "192.168.0.7", 20001, chk.FIN | chk.ACK, 1301,
                       b"abc")
    ip = fr[14:34]
    assert chk._csum(ip) == 0                              # IPv4 header checksum
    tcp = fr[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert chk._csum(pseudo + tcp) == 0                    # TCP checksum
    chk.write_pcap(tmp_path / "a.pcap", [fr, fr[:60]])
    back = chk.read_pcap(tmp_path / "a.pcap")
    assert back == [fr, fr[:60]]
    flow, server, flags = chk.flow_and_server(fr)
    assert flow == ("192.168.0.7", 20001)
    assert server == "02:fe:00:00:00:01"                    # L2 DSR: the MAC
    assert flags == chk.FIN | chk.ACK


def test_parser_finds_the_server_for_l3dsr_and_gre4() -> None:
    fr = chk.tcp_frame("02:00:00:00:01:0b", "192.168.0.9", 20002, chk.ACK, 5)
    l3 = bytearray(fr)
    l3[14 + 16:14 + 20] = chk._ip4("10.0.1.12")
    assert chk.flow_and_server(bytes(l3))[1] == "10.0.1.12"
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 47, 0, chk._ip4("10.0.1.1"),
                        chk._ip4("10.0.1.13")) + b"\0\0\x08\x00"
    gre = fr[:14] + outer + fr[14:]
    flow, server, flags = chk.flow_and_server(gre)
    assert (flow, server, flags) == (("192.168.0.9", 20002), "10.0.1.13", chk.ACK)


def test_show_parser_reads_the_cli_rows() -> None:
    # the row format of show_lb_rl (cli.c)
    fmt = "  %4u %6u %-15s %-5s %9.3f %9.3f %8u %10u %10u %12u %8u"
    show = "\n".join([
        "  mode wcmp (daemon weights), steered 10 pkts 1000 bytes, dropped 0",
        fmt % (0, 0, "10.0.1.11", "up", 1, 1.0, 3, 5, 2, 17, 0),
        "       via [@2]: ipv4 via 10.0.1.11 pg1",
        fmt % (1, 1, "10.0.1.12", "drain", 1, 4.0, 0, 9, 9, 40, 1),
    ])
    rows = chk.server_rows(show)
    assert [(r["idx"], r["weight"], r["active"], r["new"], r["completed"], r["packets"])
            for r in rows] == [(0, 1.0, 3, 5, 2, 17), (1, 4.0, 0, 9, 9, 40)]
