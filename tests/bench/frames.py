"""Full msg_out frames for the benches, written with numpy (fast at 256 x 16).

``publish_full`` fills every reservoir of every active worker (K samples),
the server table and the meta of one frame of a ``FakeDataPlane``.  Sample
arrays are drawn once per shape and reused with fresh time stamps, so a
publisher thread costs little next to the process under test.
"""

from __future__ import annotations

import numpy as np

from marllb.daemon._core import ffi, lib
from marllb.daemon.features import SERVER_DTYPE
from tests.fakedp import FakeDataPlane

K = lib.MLB_RESERVOIR_K
RES_DTYPE = np.dtype([("n_seen", "<u8"), ("count", "<u4"), ("_pad", "<u4"),
                      ("s", [("value", "<f4"), ("t", "<u4")], (K,))])
assert RES_DTYPE.itemsize == ffi.sizeof("mlb_reservoir_t")

_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _samples(rng: np.random.Generator, nw: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    key = (nw, n)
    if key not in _CACHE:
        ages = rng.integers(0, 5 * 10**9, (nw, n, 2, K), dtype=np.uint64)
        _CACHE[key] = (ages, rng.exponential(0.3, (nw, n, 2, K)).astype(np.float32))
    return _CACHE[key]


def publish_full(dp: FakeDataPlane, rng: np.random.Generator, t_ns: int, k: int) -> None:
    """A frame with every reservoir of every active worker full."""
    n, nw = dp.n_servers, dp.n_workers
    ages, values = _samples(rng, nw, n)
    dp.region.heartbeat(t_ns)
    with dp.region.write_out() as f:
        dp.frame_no += 1
        m = f.meta
        m.frame_no, m.t_ns, m.dp_gen = dp.frame_no, t_ns, dp.generation
        m.n_servers, m.n_workers, m.active_mode = n, nw, lib.MLB_MODE_SED
        srv = np.frombuffer(ffi.buffer(f.servers), dtype=SERVER_DTYPE)[:n]
        srv["id"] = np.arange(n)
        srv["admin_state"] = 0
        srv["static_weight"] = np.where(np.arange(n) % 2, 2.0, 4.0)
        srv["weight"] = srv["static_weight"]
        srv["new_flows"] = (k + 1) * np.arange(1, n + 1) * 10
        srv["active_flows"] = rng.integers(0, 50, n)
        res = np.frombuffer(ffi.buffer(f.res), dtype=RES_DTYPE).reshape(
            lib.MLB_MAX_WORKERS, lib.MLB_MAX_SERVERS, lib.MLB_RES_KINDS)
        live = res[:nw, :n]
        live["n_seen"] = 10 * K
        live["count"] = K
        stamps = ((np.uint64(t_ns) - ages) >> np.uint64(lib.MLB_SAMPLE_T_SHIFT)) & 0xFFFFFFFF
        live["s"]["t"] = stamps.astype(np.uint32)
        live["s"]["value"] = np.roll(values, k, axis=-1)
