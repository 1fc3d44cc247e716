"""Build a throwaway cffi module (tests and benchmarks only) that links the
project's portable C core, for loops that must run in C: stress writers and
readers, timing loops.  Built once per process into a temp dir."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
_BUILT: dict[str, ModuleType] = {}


def build(name: str, cdef: str, source: str) -> ModuleType:
    """Compile ``source`` (which may include "csrc/mlb_core.h") with csrc/*.c."""
    if name in _BUILT:
        return _BUILT[name]
    sys.path.insert(0, str(ROOT / "csrc"))
    from build_ffi import CORE_CDEF_HEADERS, cdef_text  # the product's own cdef

    ffi = FFI()
    ffi.cdef(cdef_text(CORE_CDEF_HEADERS) + "\n" + cdef)
    ffi.set_source(
        name,
        '#include "csrc/mlb_core.h"\n' + source,
        sources=[str(p) for p in sorted((ROOT / "csrc").glob("*.c"))],
        include_dirs=[str(ROOT)],
        extra_compile_args=["-O3", "-std=gnu11"],
        libraries=["m"],
    )
    tmp = tempfile.mkdtemp(prefix=f"{name}-")
    so = ffi.compile(tmpdir=tmp)
    spec = importlib.util.spec_from_file_location(name, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _BUILT[name] = mod
    return mod
