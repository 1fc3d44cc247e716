"""Files a user keeps are written atomically: temp file, fsync, rename.

A kill at any moment leaves either the previous complete file or the new
complete file, never a partial one.  ``replace_dir`` does the same for a
directory written as a whole (e.g. a checkpoint pair): it is built under a
temporary name and swapped in by rename, and the old one is removed only after
the new one is in place.

Used by the daemon, the simulator, the trainers and the reports alike: do not
write a user's file with ``Path.write_text``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class OutputError(OSError):
    """An output could not be written (disk full, permissions, ...); the old one is intact."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically with permission ``mode``; returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, mode: int = 0o644,
                      indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", mode)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on clean exit it is fsynced and renamed over it.

    For writers that want a file name (matplotlib's savefig, safetensors' save_file).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise OutputError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


def replace_dir(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Build a directory with ``fill(tmpdir)`` and swap it in at ``path`` as a whole.

    Readers see the old complete directory or the new complete one.  A crash
    leaves at most a ``.NAME.*.tmp``/``.old`` sibling, never a half-written ``path``;
    between the two renames ``path`` is briefly absent and ``.NAME.old`` holds the
    previous one, which ``existing_dir`` finds.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def existing_dir(path: str | os.PathLike[str]) -> Path | None:
    """``path`` if it exists, else the previous copy a crashed ``replace_dir`` left, else None."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(f".{path.name}.old")
    return old if old.is_dir() else None
