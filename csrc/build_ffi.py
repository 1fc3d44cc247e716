"""cffi API-mode build of marllb's C core: ``marllb.daemon._core``.

The cdef is the ABI header and the API headers themselves, read verbatim
(one source of truth); the C compiler then checks every struct against them.
Data-plane core sources (vpp_plugin/core/) are compiled into the same module.
"""

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent

# Read by cdef in this order: each file may use the types of those before it.
CORE_CDEF_HEADERS = ["shm_layout/mlb_shm.h", "csrc/mlb_core_api.h"]
CDEF_HEADERS = CORE_CDEF_HEADERS + ["vpp_plugin/core/dp_core_api.h", "csrc/cluster_core.h"]
C_INCLUDES = ["csrc/mlb_core.h", "vpp_plugin/core/dp_core.h", "csrc/cluster_core.h"]
SOURCE_DIRS = ["csrc", "vpp_plugin/core"]
CFLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fno-strict-aliasing"]


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


def cdef_text(headers: list[str] = CDEF_HEADERS) -> str:
    return "\n".join((ROOT / p).read_text() for p in _existing(headers))


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_text())
    includes = "".join(f'#include "{p}"\n' for p in _existing(C_INCLUDES))
    sources = sorted(
        str((ROOT / d / f.name).relative_to(ROOT))
        for d in SOURCE_DIRS
        if (ROOT / d).is_dir()
        for f in (ROOT / d).glob("*.c")
    )
    ffi.set_source(
        "marllb.daemon._core",
        includes,
        sources=sources,
        include_dirs=[str(ROOT)],
        extra_compile_args=CFLAGS,
        libraries=["m"],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
