"""The control socket: Unix stream, one JSON object per line each way.

Request ``{"cmd": "status"}``; reply ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}``.  Read-only verbs (status, weights, ping)
answer anyone who can connect (the socket is mode 0660); mutating verbs
(reload, policy, hold) only root or the daemon's own user, checked with
SO_PEERCRED.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import socketserver
import stat
import struct
import threading
from typing import Any

from marllb.daemon.status import build_status, weights_view

READ_ONLY = {"status", "weights", "ping"}
MUTATING = {"reload", "policy", "hold"}
MAX_LINE = 65536


class ControlError(Exception):
    """Client side: the daemon could not be reached or refused the request."""


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Handler(socketserver.StreamRequestHandler):
    timeout = 5.0

    def handle(self) -> None:
        server: ControlServer = self.server  # type: ignore[assignment]
        try:
            uid = peer_uid(self.request)
        except OSError:
            uid = -1
        while True:
            try:
                line = self.rfile.readline(MAX_LINE)
            except (OSError, TimeoutError):
                return
            if not line:
                return
            reply = server.dispatch(line, uid)
            try:
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()
            except OSError:
                return


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, daemon: Any, mode: int = 0o660,
                 group: str | None = None) -> None:
        self.path = path
        self.lbd = daemon
        _clear_stale(path)
        super().__init__(path, _Handler)
        os.chmod(path, mode)
        if group:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        self.own_uid = os.geteuid()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="control",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever to return
            self.shutdown()
            self._thread.join(5)
        self.server_close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass

    def dispatch(self, line: bytes, uid: int) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except ValueError as e:
            return {"ok": False, "error": f"bad request: {e}"}
        cmd = req.get("cmd")
        if cmd not in READ_ONLY | MUTATING:
            return {"ok": False, "error": f"unknown command {cmd!r}; "
                    f"known: {', '.join(sorted(READ_ONLY | MUTATING))}"}
        if cmd in MUTATING and uid not in (0, self.own_uid):
            return {"ok": False, "error": f"permission denied: {cmd!r} needs root or the "
                    f"daemon's user (uid {self.own_uid}); you are uid {uid}"}
        d = self.lbd
        try:
            if cmd == "ping":
                return {"ok": True, "result": {"pong": True, "pid": os.getpid()}}
            if cmd == "status":
                return {"ok": True, "result": build_status(d)}
            if cmd == "weights":
                return {"ok": True, "result": weights_view(d)}
            if cmd == "reload":
                res = d.reload("lbctl")
            elif cmd == "policy":
                name = req.get("name")
                if not isinstance(name, str) or not name:
                    return {"ok": False, "error": "policy: 'name' (a string) is required"}
                ckpt = req.get("checkpoint")
                res = d.set_policy(name, ckpt if isinstance(ckpt, str) else None)
            else:  # hold
                on = req.get("on")
                if not isinstance(on, bool):
                    return {"ok": False, "error": "hold: 'on' (true/false) is required"}
                res = d.set_hold(on)
        except Exception as e:  # noqa: BLE001 - a bad request never kills the daemon
            return {"ok": False, "error": f"{cmd} failed: {type(e).__name__}: {e}"}
        if res.get("ok"):
            return {"ok": True, "result": res}
        return {"ok": False, "error": res.get("error") or f"{cmd} failed"}


def _clear_stale(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse if one is listening."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another lbd is already listening on {path}")


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Client: send one request, return the reply object; ControlError if unreachable."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"lbd is not running (no control socket at {path})") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"lbd is not running (stale control socket {path}: connection refused)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: join the socket's group or use sudo"
            ) from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(f"lbd did not answer on {path} within {timeout:g}s") from None
    finally:
        s.close()
    if not buf:
        raise ControlError(f"lbd closed the connection on {path} without an answer")
    try:
        return json.loads(buf)
    except ValueError:
        raise ControlError(f"garbled reply from {path}") from None
