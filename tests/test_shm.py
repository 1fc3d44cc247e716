"""Creating and attaching regions, and each way an attach can fail."""

from __future__ import annotations

import mmap
import os

import posix_ipc
import pytest

from marllb.daemon import shm
from marllb.daemon._core import ffi, lib
from marllb.daemon.shm import Region


@pytest.fixture
def name(request) -> str:
    n = f"/mlbtest-{os.getpid()}-{request.node.name[:30]}"
    shm.unlink(n)
    yield n
    shm.unlink(n)


def raw_region(name: str, size: int, fill: bytes = b"") -> None:
    s = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=size)
    mm = mmap.mmap(s.fd, size)
    s.close_fd()
    mm[: len(fill)] = fill
    mm.close()


def test_create_then_attach_sees_the_same_region(name: str) -> None:
    with Region.create(name, 8, 2, generation=1234) as dp, Region.attach(name) as d:
        assert d.generation == 1234 and d.n_servers == 8 and d.n_workers == 2
        assert shm.region_mode(name) == 0o660
        with dp.write_out() as f:
            f.meta.n_servers = 8
            f.meta.n_workers = 2
            f.servers[3].active_flows = 17
        out = ffi.new("mlb_msg_out_t *")
        assert d.snapshot_out(out) == 0
        assert out.meta.frame_no == 1 and out.servers[3].active_flows == 17
        with d.write_in() as m:
            m.weight[0] = 2.5
            m.dp_gen = 1234
        msg = ffi.new("mlb_msg_in_t *")
        dp.snapshot_in(msg)
        assert msg.weight[0] == 2.5 and msg.dp_gen == 1234


def test_attach_never_resizes(name: str) -> None:
    with Region.create(name, 4):
        before = os.stat("/dev/shm" + name).st_size
        Region.attach(name).close()
        assert os.stat("/dev/shm" + name).st_size == before


def test_create_refuses_existing_unless_replace(name: str) -> None:
    with Region.create(name, 4, generation=1):
        with pytest.raises(shm.RegionExists, match="already exists"):
            Region.create(name, 4)
        with Region.create(name, 4, generation=2, replace=True) as again:
            assert again.generation == 2


def test_no_frame_yet_is_lookup_error(name: str) -> None:
    with Region.create(name, 4) as r:
        with pytest.raises(LookupError, match="no msg_out"):
            r.snapshot_out(ffi.new("mlb_msg_out_t *"))


def test_attach_missing(name: str) -> None:
    with pytest.raises(shm.RegionMissing, match="does not exist"):
        Region.attach(name)


def test_attach_not_ours(name: str) -> None:
    raw_region(name, lib.mlb_region_size(), b"NOTMARLLB" * 100)
    with pytest.raises(shm.RegionNotOurs, match="not a marllb region"):
        Region.attach(name)


def test_attach_shorter_than_header(name: str) -> None:
    raw_region(name, 16)
    with pytest.raises(shm.RegionTooShort, match="shorter than its header"):
        Region.attach(name)


def _copy_header_into_short_region(src: Region, name: str, size: int) -> None:
    hdr = bytes(ffi.buffer(src.ptr, ffi.sizeof("mlb_header_t")))
    raw_region(name, size, hdr)


def test_attach_shorter_than_header_says(name: str) -> None:
    with Region.create(name + "-src", 4) as src:
        _copy_header_into_short_region(src, name, 1 << 20)
        src.unlink()
    with pytest.raises(shm.RegionTooShort, match="shorter than the"):
        Region.attach(name)


def test_attach_abi_version_mismatch(name: str) -> None:
    with Region.create(name, 4) as r:
        r.ptr.hdr.abi_version = 99
        with pytest.raises(shm.RegionAbiMismatch,
                           match=f"ABI version 99.*version {shm.ABI_VERSION}"):
            Region.attach(name)


def test_attach_layout_mismatch_names_the_field(name: str) -> None:
    with Region.create(name, 4) as r:
        r.ptr.hdr.sizeof_reservoir = 1000
        with pytest.raises(shm.RegionAbiMismatch, match="sizeof_reservoir is 1000"):
            Region.attach(name)


def test_attach_permission_denied(name: str) -> None:
    with Region.create(name, 4, mode=0o600):
        pid = os.fork()
        if pid == 0:  # child: become an unprivileged user, then try
            code = 3
            try:
                if os.getuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                else:
                    os.chmod("/dev/shm" + name, 0)
                Region.attach(name)
                code = 1
            except shm.RegionPermission as e:
                code = 0 if "permission denied" in str(e) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_bad_names_and_sizes() -> None:
    with pytest.raises(shm.RegionError, match="invalid region name"):
        shm.shm_name("a/b")
    with pytest.raises(shm.RegionError, match="n_servers=0"):
        Region.create("/mlbtest-never", 0)
    with pytest.raises(shm.RegionError, match="n_workers=17"):
        Region.create("/mlbtest-never", 4, 17)
