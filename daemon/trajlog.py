"""A bounded, crash-safe on-disk log of the daemon's own (observation, action) trajectory.

Opt-in (``trajectory_log`` in lbd's config).  Each tick appends one record:
the data-plane time, the policy that decided, the observation matrix
(``features.observation_matrix``, float32, n x F) and the published weights
(float32, n).  The outcome of a decision is the next record's observation (the
FCTs the data plane measured afterwards), so nothing is joined later.

Crash safety: records are framed ``magic | length | crc32 | payload`` and
appended with one ``write`` each; a kill -9 can leave at most one torn record
at the end of the newest segment, which the reader detects (length or CRC) and
skips.  Files are flushed every record and fsynced every ``fsync_every_s``.

Bounded: segments rotate at ``segment_bytes``; when the total exceeds
``max_bytes`` the oldest segments are deleted.  The log never grows past
``max_bytes + segment_bytes`` and a full disk only stops the log (counted),
never the tick loop.
"""

from __future__ import annotations

import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0x4A52544D          # "MTRJ"
_HDR = struct.Struct("<III")  # magic, payload length, crc32(payload)
_REC = struct.Struct("<QHHI")  # t_ns, n servers, n features, policy name length
_SEG = re.compile(r"^traj-(\d{12})\.log$")
MAX_RECORD = 1 << 24


@dataclass(frozen=True)
class TrajRecord:
    t_ns: int
    policy: str
    obs: np.ndarray       # (n, F) float32
    weights: np.ndarray   # (n,) float32


def encode(rec: TrajRecord) -> bytes:
    name = rec.policy.encode()[:255]
    obs = np.ascontiguousarray(rec.obs, dtype=np.float32)
    w = np.ascontiguousarray(rec.weights, dtype=np.float32).reshape(-1)
    n, nf = obs.shape
    if w.shape[0] != n:
        raise ValueError(f"trajectory record: {n} observation rows but {w.shape[0]} weights")
    payload = _REC.pack(rec.t_ns, n, nf, len(name)) + name + obs.tobytes() + w.tobytes()
    return _HDR.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> TrajRecord:
    t_ns, n, nf, ln = _REC.unpack_from(payload)
    off = _REC.size
    name = payload[off:off + ln].decode(errors="replace")
    off += ln
    obs = np.frombuffer(payload, np.float32, n * nf, off).reshape(n, nf)
    off += 4 * n * nf
    w = np.frombuffer(payload, np.float32, n, off)
    return TrajRecord(t_ns, name, obs.copy(), w.copy())


class TrajectoryLog:
    """Appends records to ``DIR/traj-NNNNNNNNNNNN.log`` segments, bounded in size."""

    def __init__(self, path: str | Path, *, max_bytes: int = 256 << 20,
                 segment_bytes: int = 16 << 20, fsync_every_s: float = 5.0) -> None:
        if not 0 < segment_bytes <= max_bytes:
            raise ValueError("trajectory log: need 0 < segment_bytes <= max_bytes")
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes)
        self.fsync_every_s = float(fsync_every_s)
        self.errors = 0
        self.records = 0
        self.last_error: str | None = None
        self._fd: int | None = None
        self._size = 0
        self._last_sync = time.monotonic()
        segs = segments(self.dir)
        self._seq = (int(_SEG.match(segs[-1].name).group(1)) + 1) if segs else 0  # type: ignore[union-attr]

    def append(self, rec: TrajRecord) -> bool:
        """Append one record; False (and counted) on any I/O error — never raises OSError."""
        try:
            data = encode(rec)
            if self._fd is None or self._size + len(data) > self.segment_bytes:
                self._rotate()
            assert self._fd is not None
            os.write(self._fd, data)
            self._size += len(data)
            self.records += 1
            now = time.monotonic()
            if now - self._last_sync >= self.fsync_every_s:
                os.fsync(self._fd)
                self._last_sync = now
            return True
        except OSError as e:
            self.errors += 1
            self.last_error = f"trajectory log {self.dir}: {e.strerror or e}"
            self.close()
            return False

    def _rotate(self) -> None:
        self.close()
        p = self.dir / f"traj-{self._seq:012d}.log"
        self._seq += 1
        self._fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = 0
        self._trim()

    def _trim(self) -> None:
        segs = segments(self.dir)
        total = sum(s.stat().st_size for s in segs)
        for s in segs[:-1]:
            if total <= self.max_bytes - self.segment_bytes:
                break
            total -= s.stat().st_size
            s.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def segments(path: str | Path) -> list[Path]:
    d = Path(path)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _SEG.match(p.name))


def read_log(path: str | Path) -> Iterator[TrajRecord]:
    """Every intact record, oldest first; a torn or corrupt tail of a segment is skipped."""
    for seg in segments(path):
        try:
            data = seg.read_bytes()
        except OSError:
            continue
        off = 0
        while off + _HDR.size <= len(data):
            magic, ln, crc = _HDR.unpack_from(data, off)
            end = off + _HDR.size + ln
            if magic != MAGIC or ln > MAX_RECORD or end > len(data):
                break
            payload = data[off + _HDR.size:end]
            if zlib.crc32(payload) != crc:
                break
            try:
                yield _decode(payload)
            except (struct.error, ValueError, UnicodeDecodeError):
                break
            off = end
