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


class RegionBusy(RegionError):
    """A consistent snapshot could not be taken within the retry bound."""


def shm_name(name: str) -> str:
    """POSIX shm names start with exactly one slash and contain no other."""
    bare = name.lstrip("/")
    if not bare or "/" in bare:
        raise RegionError(f"invalid region name {name!r}: use letters, digits, '-', '_', '.'")
    return "/" + bare


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

    def __init__(self, name: str, mm: mmap.mmap, owner: bool) -> None:
        self.name = shm_name(name)
        self._mm = mm
        self._buf = ffi.from_buffer(mm)
        self.ptr = ffi.cast("mlb_region_t *", self._buf)
        self.owner = owner
        self.size = len(mm)

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
        try:
            os.fchmod(shm.fd, mode)  # shm_open applies the umask; we want exactly mode
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        region = cls(path, mm, owner=True)
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
        try:
            size = os.fstat(shm.fd).st_size
            hdr_size = ffi.sizeof("mlb_header_t")
            if size < hdr_size:
                raise RegionTooShort(
                    f"region {path} is {size} bytes, shorter than its header ({hdr_size})"
                )
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(shm.fd, size, prot=prot)
        finally:
            shm.close_fd()
        region = cls(path, mm, owner=False)
        try:
            region.validate()
        except RegionError:
            region.close()
            raise
        return region

    def validate(self) -> None:
        """Check magic, ABI version and layout; raise a RegionError naming the problem."""
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

    def close(self) -> None:
        """Unmap (the region itself stays; see ``unlink``)."""
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
        return self.ptr.hdr

    @property
    def generation(self) -> int:
        return int(self.ptr.hdr.dp_generation)

    @property
    def n_servers(self) -> int:
        return int(self.ptr.hdr.n_servers)

    @property
    def n_workers(self) -> int:
        return int(self.ptr.hdr.n_workers)

    def heartbeat_ns(self) -> int:
        return int(lib.mlb_region_load_u64(ffi.addressof(self.ptr.hdr, "heartbeat_ns")))

    def out_published(self) -> int:
        return int(lib.mlb_region_load_u64(ffi.addressof(self.ptr.hdr, "out_published")))

    def in_published(self) -> int:
        return int(lib.mlb_region_load_u64(ffi.addressof(self.ptr.hdr, "in_published")))

    def heartbeat(self, now_ns: int) -> None:
        lib.mlb_region_heartbeat(self.ptr, now_ns)

    # -- consistent reads ----------------------------------------------------------
    def snapshot_out(self, dst: Any, tries: int = DEFAULT_TRIES) -> int:
        """Copy the latest msg_out into ``dst`` (an ``mlb_msg_out_t *``).

        Returns the retries used; raises RegionBusy, or LookupError before the
        first frame."""
        retries = ffi.new("uint32_t *")
        rc = lib.mlb_out_snapshot(self.ptr, dst, tries, retries)
        return _check_read(rc, retries[0], self.name, "msg_out")

    def snapshot_view(self, dst: Any, rng: Any, tries: int = DEFAULT_TRIES) -> int:
        """Latest msg_out with per-server reservoirs merged across workers."""
        retries = ffi.new("uint32_t *")
        rc = lib.mlb_out_snapshot_view(self.ptr, dst, rng, tries, retries)
        return _check_read(rc, retries[0], self.name, "msg_out")

    def snapshot_in(self, dst: Any, tries: int = DEFAULT_TRIES) -> int:
        retries = ffi.new("uint32_t *")
        rc = lib.mlb_in_snapshot(self.ptr, dst, tries, retries)
        return _check_read(rc, retries[0], self.name, "msg_in")

    # -- single-writer publishing ----------------------------------------------------
    @contextmanager
    def write_out(self) -> Iterator[Any]:
        """Fill the next msg_out frame; published when the block exits."""
        frame = lib.mlb_out_begin(self.ptr)
        yield frame
        lib.mlb_out_commit(self.ptr, frame)

    @contextmanager
    def write_in(self) -> Iterator[Any]:
        """Fill the next msg_in message; published when the block exits."""
        msg = lib.mlb_in_begin(self.ptr)
        yield msg
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
