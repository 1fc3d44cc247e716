"""The control socket: Unix stream, one JSON object per line each way.

Request ``{"cmd": "status"}``; reply ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}``.  Read-only verbs (status, weights, ping)
answer anyone who can connect (the socket is mode 0660); mutating verbs
(reload, policy, hold) only root or the daemon's own user, checked with
SO_PEERCRED.

Robustness: every request line gets exactly one reply, an error for a
malformed one (bad JSON, not an object, unknown verb, over MAX_LINE bytes,
not UTF-8); past MAX_CLIENTS concurrent connections a new one is answered
``busy, retry`` and closed; the listen backlog absorbs bursts.  The socket
is created with its final mode (umask around bind, no chmod afterwards) and
a symlink or any non-socket at the path is refused, never followed.
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
MAX_SKIP = 64 << 20   # an over-long request is skipped up to this much, then dropped
MAX_CLIENTS = 64      # concurrent connections served; more get "busy, retry"
BACKLOG = 128         # pending connections the kernel queues for accept()
BUSY_ERROR = "busy, retry: too many concurrent control connections"


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
        if not server.slots.acquire(blocking=False):
            self._reply({"ok": False, "error": BUSY_ERROR, "busy": True})
            return
        try:
            self._serve(server)
        finally:
            server.slots.release()

    def _serve(self, server: ControlServer) -> None:
        try:
            uid = peer_uid(self.request)
        except OSError:
            uid = -1
        while True:
            try:
                line = self.rfile.readline(MAX_LINE + 1)
            except (OSError, TimeoutError, ValueError):
                return
            if not line:
                return
            if len(line) > MAX_LINE:
                # answer, skip the rest of the line (bounded) and go on with the next
                ok = self._reply({"ok": False,
                                  "error": f"bad request: longer than {MAX_LINE} bytes"})
                if not ok or not self._skip_line(line):
                    return
                continue
            if not self._reply(server.dispatch(line, uid)):
                return

    def _skip_line(self, head: bytes) -> bool:
        """Discard the rest of an over-long line; False if the client should be dropped."""
        skipped = len(head)
        while not head.endswith(b"\n"):
            if skipped > MAX_SKIP:
                return False
            try:
                head = self.rfile.readline(MAX_LINE)
            except (OSError, TimeoutError, ValueError):
                return False
            if not head:
                return False
            skipped += len(head)
        return True

    def _reply(self, reply: dict[str, Any]) -> bool:
        try:
            data = json.dumps(reply, default=str, allow_nan=False)
        except ValueError:   # a NaN somewhere in a status: still valid JSON out
            data = json.dumps(reply, default=str).replace("NaN", "null")
        try:
            self.wfile.write(data.encode() + b"\n")
            self.wfile.flush()
        except OSError:
            return False
        return True


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = BACKLOG

    def __init__(self, path: str, daemon: Any, mode: int = 0o660,
                 group: str | None = None) -> None:
        self.path = path
        self.lbd = daemon
        self.mode = mode & 0o777
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        gid = grp.getgrnam(group).gr_gid if group else None   # KeyError before binding
        _clear_stale(path)
        super().__init__(path, _Handler)
        try:
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{path} was replaced while binding (not a socket now)")
            if gid is not None:
                os.chown(path, -1, gid, follow_symlinks=False)
        except BaseException:
            self.server_close()
            raise
        self.own_uid = os.geteuid()
        self._thread: threading.Thread | None = None

    def server_bind(self) -> None:
        """bind() creates the socket file: under a umask that gives exactly ``mode``
        (no chmod afterwards, so no window with a wider mode and nothing to follow)."""
        old = os.umask(0o777 & ~self.mode)
        try:
            super().server_bind()
        finally:
            os.umask(old)

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
        """One request line -> one reply object; never raises."""
        try:
            return self._dispatch(line, uid)
        except Exception as e:  # noqa: BLE001 - a bad request never kills the daemon
            return {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}

    def _dispatch(self, line: bytes, uid: int) -> dict[str, Any]:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return {"ok": False, "error": f"bad request: not UTF-8 (byte offset {e.start})"}
        try:
            req = json.loads(text)
        except (ValueError, RecursionError) as e:
            return {"ok": False, "error": f"bad request: invalid JSON: {e}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "bad request: request must be a JSON object"}
        cmd = req.get("cmd")
        if not isinstance(cmd, str) or cmd not in READ_ONLY | MUTATING:
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
    if stat.S_ISLNK(st.st_mode):
        raise OSError(f"{path} is a symbolic link: refusing to follow it (remove it)")
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
