"""The shared-memory region from Python: create (data-plane side) and attach
(daemon side), and consistent reads and writes through the C latch.

Only C touches live frames: Python gets copies (``snapshot_*``) or fills a
frame between ``begin`` and ``commit`` while it is the single writer.
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import posix_ipc

from marllb.daemon._core import ffi, lib

MAX_SERVERS = lib.MLB_MAX_SERVERS
MAX_WORKERS = lib.MLB_MAX_WORKERS
RESERVOIR_K = lib.MLB_RESERVOIR_K
ABI_VERSION = lib.MLB_ABI_VERSION
DEFAULT_TRIES = 64


class RegionError(Exception):
    """Any problem with a region; the message says what and which region."""


class RegionMissing(RegionError):
    pass


class RegionExists(RegionError):
    pass


class RegionPermission(RegionError):
    pass


class RegionNotOurs(RegionError):
    pass


class RegionAbiMismatch(RegionError):
    pass


class RegionTooShort(RegionError):
    pass


class RegionShrunk(RegionTooShort):
    """The region's file got shorter than our mapping (truncated under us).

    Touching the mapping past the new end would be SIGBUS, so every access
    through ``Region`` re-checks the size first and raises this instead; the
    daemon detaches and re-attaches when a valid region is back."""


class RegionBusy(RegionError):
    """A consistent snapshot could not be taken within the retry bound."""


# NAME_MAX of the shm filesystem is 255; the header keeps MLB_NAME_LEN bytes of it
MAX_NAME_LEN = lib.MLB_NAME_LEN - 2


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid region name, or None.

    POSIX shm rules as this project applies them: at most one leading slash
    (``vip0`` and ``/vip0`` are the same region), no other slash, no NUL, not
    ``.`` or ``..`` (they name directories), 1..MAX_NAME_LEN bytes."""
    if not isinstance(name, str):
        return "must be a string"
    bare = name[1:] if name.startswith("/") else name
    if not bare:
        return "is empty"
    if "\0" in bare:
        return "contains a NUL byte"
    if "/" in bare:
        return "contains a '/' (only one leading slash is allowed)"
    if bare in (".", ".."):
        return f"{bare!r} is not a region name"
    try:
        n = len(bare.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if n > MAX_NAME_LEN:
        return f"is {n} bytes long, at most {MAX_NAME_LEN}"
    return None


def shm_name(name: str) -> str:
    """The POSIX shm name: exactly one leading slash; RegionError for an invalid name."""
    why = name_problem(name)
    if why is not None:
        raise RegionError(f"invalid region name {name!r}: {why}")
    return "/" + name.removeprefix("/")


def new_generation() -> int:
    """A random non-zero 64-bit generation: differs on every (re)start."""
    return int.from_bytes(os.urandom(8), "little") | 1


def _layout_detail(hdr: Any) -> str:
    """Name the first header field that disagrees with this build."""
    expected = {
        "header_size": ffi.sizeof("mlb_header_t"),
        "sizeof_server_stats": ffi.sizeof("mlb_server_stats_t"),
        "sizeof_reservoir": ffi.sizeof("mlb_reservoir_t"),
        "sizeof_msg_out": ffi.sizeof("mlb_msg_out_t"),
        "sizeof_msg_in": ffi.sizeof("mlb_msg_in_t"),
        "reservoir_k": RESERVOIR_K,
        "max_servers": MAX_SERVERS,
        "max_workers": MAX_WORKERS,
        "off_msg_out": ffi.offsetof("mlb_region_t", "out"),
        "off_msg_in": ffi.offsetof("mlb_region_t", "in"),
        "region_size": ffi.sizeof("mlb_region_t"),
    }
    for field, want in expected.items():
        got = getattr(hdr, field)
        if got != want:
            return f"header field {field} is {got}, this build expects {want}"
    for field, top in (("n_servers", MAX_SERVERS), ("n_workers", MAX_WORKERS)):
        got = getattr(hdr, field)
        if not 1 <= got <= top:
            return f"header field {field} is {got}, must be 1..{top}"
    return "layout mismatch"


class Region:
    """One mapped region. Use ``Region.create`` or ``Region.attach``."""

    def __init__(self, name: str, mm: mmap.mmap, owner: bool, fd: int | None = None) -> None:
        self.name = shm_name(name)
        self._mm = mm
        self._buf = ffi.from_buffer(mm)
        self.ptr = ffi.cast("mlb_region_t *", self._buf)
        self.owner = owner
        self.size = len(mm)
        # kept open to re-check the size before every access (see size_problem)
        self._fd = fd

    # -- lifecycle ---------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        n_servers: int,
        n_workers: int = 1,
        *,
        publish_interval_ns: int = 50_000_000,
        generation: int | None = None,
        mode: int = 0o660,
        replace: bool = False,
    ) -> Region:
        """Create and initialise a region as the data plane does (magic last)."""
        path = shm_name(name)
        if not 1 <= n_servers <= MAX_SERVERS:
            raise RegionError(f"n_servers={n_servers} out of range 1..{MAX_SERVERS}")
        if not 1 <= n_workers <= MAX_WORKERS:
            raise RegionError(f"n_workers={n_workers} out of range 1..{MAX_WORKERS}")
        size = lib.mlb_region_size()
        if replace:
            unlink(path)
        try:
            shm = posix_ipc.SharedMemory(path, posix_ipc.O_CREX, mode=mode, size=size)
        except posix_ipc.ExistentialError as e:
            raise RegionExists(f"region {path} already exists (another data plane?)") from e
        except posix_ipc.PermissionsError as e:
            raise RegionPermission(f"permission denied creating region {path}") from e
        fd = os.dup(shm.fd)
        try:
            os.fchmod(fd, mode)  # shm_open applies the umask; we want exactly mode
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        finally:
            shm.close_fd()
        region = cls(path, mm, owner=True, fd=fd)
        gen = generation if generation is not None else new_generation()
        rc = lib.mlb_region_init(
            region.ptr, size, n_servers, n_workers, gen, publish_interval_ns,
            path.encode()[: lib.MLB_NAME_LEN - 1], os.getpid(),
        )
        if rc != lib.MLB_OK:
            region.close()
            unlink(path)
            raise RegionError(f"could not initialise region {path}: error {rc}")
        return region

    @classmethod
    def attach(cls, name: str, *, writable: bool = True) -> Region:
        """Attach to an existing region (size 0: never resizes) and validate it."""
        path = shm_name(name)
        flags_rw = os.O_RDWR if writable else os.O_RDONLY
        try:
            shm = posix_ipc.SharedMemory(path, 0, size=0, read_only=not writable)
        except posix_ipc.ExistentialError as e:
            raise RegionMissing(f"region {path} does not exist (is the data plane running?)") from e
        except posix_ipc.PermissionsError as e:
            raise RegionPermission(
                f"permission denied opening region {path} "
                f"({'read-write' if flags_rw == os.O_RDWR else 'read-only'})"
            ) from e
        fd = os.dup(shm.fd)
        try:
            size = os.fstat(fd).st_size
            hdr_size = ffi.sizeof("mlb_header_t")
            if size < hdr_size:
                raise RegionTooShort(
                    f"region {path} is {size} bytes, shorter than its header ({hdr_size})"
                )
            if size > lib.mlb_region_size():
                size = lib.mlb_region_size()   # a grown file: map what the ABI needs only
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, size, prot=prot)
        except BaseException:
            os.close(fd)
            raise
        finally:
            shm.close_fd()
        region = cls(path, mm, owner=False, fd=fd)
        try:
            region.validate()
        except RegionError:
            region.close()
            raise
        return region

    def validate(self) -> None:
        """Check magic, ABI version and layout; raise a RegionError naming the problem."""
        self._guard()
        rc = lib.mlb_region_validate(self._buf, self.size)
        hdr = self.ptr.hdr
        if rc == lib.MLB_OK:
            return
        if rc == lib.MLB_ERR_MAGIC:
            raise RegionNotOurs(
                f"region {self.name} is not a marllb region "
                f"(magic {hdr.magic:#010x}, expected {lib.MLB_MAGIC:#010x})"
            )
        if rc == lib.MLB_ERR_VERSION:
            raise RegionAbiMismatch(
                f"region {self.name} has ABI version {hdr.abi_version}, "
                f"this build speaks version {ABI_VERSION}"
            )
        if rc == lib.MLB_ERR_SHORT:
            raise RegionTooShort(
                f"region {self.name} is {self.size} bytes, shorter than the "
                f"{hdr.region_size} bytes its header says"
            )
        raise RegionAbiMismatch(f"region {self.name}: {_layout_detail(hdr)}")

    def size_problem(self) -> str | None:
        """Why touching the mapping now could fault (SIGBUS), or None when it is safe.

        A region's file can be truncated by anything that may write it; pages
        past the new end then fault on access.  ``fstat`` on our own fd sees
        the current size, so it is checked before every access (about 1 us)."""
        if self._fd is None:
            return None if self._mm is not None else f"region {self.name} is closed"
        try:
            now = os.fstat(self._fd).st_size
        except OSError as e:
            return f"region {self.name}: fstat failed: {e.strerror or e}"
        if now < self.size:
            return (f"region {self.name} shrank to {now} bytes while mapped "
                    f"({self.size} bytes): truncated by another process")
        return None

    def _guard(self) -> None:
        if self._mm is None:
            raise RegionError(f"region {self.name} is closed")
        why = self.size_problem()
        if why is not None:
            raise RegionShrunk(why)

    def close(self) -> None:
        """Unmap (the region itself stays; see ``unlink``)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._mm is None:
            return
        ffi.release(self._buf)  # from_buffer pins the mmap: release before close
        self.ptr = None
        self._mm.close()
        self._mm = None

    def unlink(self) -> None:
        unlink(self.name)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- header ----------------------------------------------------------------
    @property
    def hdr(self) -> Any:
        self._guard()
        return self.ptr.hdr

    @property
    def generation(self) -> int:
        return int(self.hdr.dp_generation)

    @property
    def n_servers(self) -> int:
        return int(self.hdr.n_servers)

    @property
    def n_workers(self) -> int:
        return int(self.hdr.n_workers)

    def heartbeat_ns(self) -> int:
        return int(lib.mlb_region_load_u64(ffi.addressof(self.hdr, "heartbeat_ns")))

    def out_published(self) -> int:
        return int(lib.mlb_region_load_u64(ffi.addressof(self.hdr, "out_published")))

    def in_published(self) -> int:
        return int(lib.mlb_region_load_u64(ffi.addressof(self.hdr, "in_published")))

    def heartbeat(self, now_ns: int) -> None:
        self._guard()
        lib.mlb_region_heartbeat(self.ptr, now_ns)

    # -- consistent reads ----------------------------------------------------------
    def snapshot_out(self, dst: Any, tries: int = DEFAULT_TRIES) -> int:
        """Copy the latest msg_out into ``dst`` (an ``mlb_msg_out_t *``).

        Returns the retries used; raises RegionBusy, or LookupError before the
        first frame."""
        retries = ffi.new("uint32_t *")
        self._guard()
        rc = lib.mlb_out_snapshot(self.ptr, dst, tries, retries)
        return _check_read(rc, retries[0], self.name, "msg_out")

    def snapshot_view(self, dst: Any, rng: Any, tries: int = DEFAULT_TRIES) -> int:
        """Latest msg_out with per-server reservoirs merged across workers."""
        retries = ffi.new("uint32_t *")
        self._guard()
        rc = lib.mlb_out_snapshot_view(self.ptr, dst, rng, tries, retries)
        return _check_read(rc, retries[0], self.name, "msg_out")

    def snapshot_in(self, dst: Any, tries: int = DEFAULT_TRIES) -> int:
        retries = ffi.new("uint32_t *")
        self._guard()
        rc = lib.mlb_in_snapshot(self.ptr, dst, tries, retries)
        return _check_read(rc, retries[0], self.name, "msg_in")

    # -- single-writer publishing ----------------------------------------------------
    @contextmanager
    def write_out(self) -> Iterator[Any]:
        """Fill the next msg_out frame; published when the block exits."""
        self._guard()
        frame = lib.mlb_out_begin(self.ptr)
        yield frame
        self._guard()
        lib.mlb_out_commit(self.ptr, frame)

    @contextmanager
    def write_in(self) -> Iterator[Any]:
        """Fill the next msg_in message; published when the block exits."""
        self._guard()
        msg = lib.mlb_in_begin(self.ptr)
        yield msg
        self._guard()
        lib.mlb_in_commit(self.ptr, msg)

    # -- in-memory mode (the simulator's LBs) ---------------------------------------
    @classmethod
    def in_memory(cls, n_servers: int, n_workers: int = 1, *,
                  publish_interval_ns: int = 50_000_000, generation: int | None = None,
                  name: str = "in-memory") -> Region:
        """A region in private anonymous memory: the same reads and writes as
        a shm region, nothing in /dev/shm (``unlink`` finds nothing to remove)."""
        size = lib.mlb_region_size()
        region = cls(name, mmap.mmap(-1, size), owner=True)
        gen = generation if generation is not None else new_generation()
        rc = lib.mlb_region_init(region.ptr, size, n_servers, n_workers,
                                 gen & 0xFFFFFFFFFFFFFFFF, publish_interval_ns,
                                 region.name.encode()[: lib.MLB_NAME_LEN - 1], os.getpid())
        if rc != lib.MLB_OK:
            region.close()
            raise RegionError(f"could not initialise in-memory region {region.name} "
                              f"({n_servers} servers, {n_workers} workers): error {rc}")
        return region


def _check_read(rc: int, retries: int, name: str, what: str) -> int:
    if rc == lib.MLB_OK:
        return retries
    if rc == lib.MLB_ERR_NODATA:
        raise LookupError(f"region {name}: no {what} published yet")
    raise RegionBusy(f"region {name}: no consistent {what} after {retries} retries")


def unlink(name: str) -> bool:
    """Remove a region's name; mappings stay valid. False if it did not exist."""
    try:
        posix_ipc.unlink_shared_memory(shm_name(name))
        return True
    except posix_ipc.ExistentialError:
        return False


def region_exists(name: str) -> bool:
    return os.path.exists("/dev/shm/" + shm_name(name).lstrip("/"))


def region_mode(name: str) -> int:
    """Permission bits of a region (Linux: it lives in /dev/shm)."""
    return stat.S_IMODE(os.stat("/dev/shm/" + shm_name(name).lstrip("/")).st_mode)


def monotonic_ns() -> int:
    return time.monotonic_ns()
