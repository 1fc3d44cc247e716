"""Defect 7: the control socket.  Every request gets one reply (an error for a
malformed one), a burst of connections is served, the socket is created with
its mode (no chmod after bind) and a symlink at its path is never followed."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from marllb.daemon.control import MAX_LINE, ControlServer


class _FakeDaemon(SimpleNamespace):
    def reload(self, source: str) -> dict:
        return {"ok": True, "error": None}


@pytest.fixture
def server(tmp_path: Path):
    srv = ControlServer(str(tmp_path / "c.sock"), _FakeDaemon(), 0o660)
    srv.start()
    yield srv
    srv.stop()


def ask(path: str, payload: bytes, timeout: float = 10.0) -> list[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    finally:
        s.close()
    return [json.loads(x) for x in buf.splitlines()]


@pytest.mark.parametrize(("payload", "says"), [
    (b"{not json\n", "invalid JSON"),
    (b"[1, 2]\n", "JSON object"),
    (b'"status"\n', "JSON object"),
    (b'{"cmd": ["status"]}\n', "unknown command"),
    (b'{"cmd": {"a": 1}}\n', "unknown command"),
    (b'{"cmd": null}\n', "unknown command"),
    (b'{"cmd": "frobnicate"}\n', "unknown command"),
    (b'{"cmd": "st\xff\xfeatus"}\n', "not UTF-8"),
    (b"[" * 100_00 + b"\n", "bad request"),
    (b'{"cmd": "policy", "name": 7}\n', "'name'"),
    (b'{"cmd": "hold", "on": "yes"}\n', "'on'"),
    (b"\n", "invalid JSON"),
])
def test_malformed_requests_get_an_error_reply(server: ControlServer, payload: bytes,
                                               says: str) -> None:
    replies = ask(server.path, payload)
    assert len(replies) == 1, replies
    assert replies[0]["ok"] is False and says in replies[0]["error"], replies


def test_huge_line_gets_one_reply_and_the_next_is_served(server: ControlServer) -> None:
    replies = ask(server.path, b'{"cmd": "' + b"x" * (3 * MAX_LINE) + b'"}\n{"cmd": "ping"}\n')
    assert len(replies) == 2 and "longer than" in replies[0]["error"], replies
    assert replies[1]["ok"] is True
    # the server is still fine
    assert ask(server.path, b'{"cmd": "ping"}\n')[0]["ok"] is True


def test_several_requests_on_one_connection(server: ControlServer) -> None:
    replies = ask(server.path, b'{"cmd": "ping"}\nnope\n{"cmd": "ping"}\n')
    assert [r["ok"] for r in replies] == [True, False, True]


def test_burst_of_connections_all_answered(server: ControlServer) -> None:
    n = 100   # the old server's backlog of 5 refused a burst of 16
    results: list[bool] = []
    socks = []
    # open them all before any is read: the listen backlog must hold the burst
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect(server.path)       # EAGAIN here = refused: the backlog overflowed
        s.settimeout(30)
        socks.append(s)

    def one(s: socket.socket) -> None:
        try:
            s.sendall(b'{"cmd": "ping"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            r = json.loads(buf)
            # served, or told to retry: never refused, never silent
            results.append(r["ok"] is True or r.get("busy") is True)
        except (OSError, ValueError):
            results.append(False)
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n and all(results), results.count(False)


def test_socket_created_with_its_mode(tmp_path: Path) -> None:
    old = os.umask(0)   # a permissive umask must not widen the socket, even briefly
    try:
        srv = ControlServer(str(tmp_path / "m.sock"), _FakeDaemon(), 0o600)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(srv.path).st_mode) == 0o600
    finally:
        srv.server_close()


def test_symlink_at_socket_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    os.chmod(target, 0o600)
    link = tmp_path / "l.sock"
    link.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        ControlServer(str(link), _FakeDaemon(), 0o666)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "keep me"
    assert link.is_symlink()
