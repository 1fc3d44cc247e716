"""Fault suite: >= 10^5 fuzzed msg_in frames through the real data-plane core.

Property: a frame that is invalid (wrong server count, mode out of range, a
non-finite or negative weight, no positive weight for an up server, computed
for another data-plane generation, stamped in the future, or older than its
TTL) is NEVER applied: the weights in force stay what they were or fall back
to the static ones.  A frame that is applied puts exactly its weights in force.
"""

from __future__ import annotations

import math

import numpy as np

from marllb.daemon._core import ffi, lib

N = 4
GEN = 0x5EED
SEC = 1_000_000_000
FRAMES = 100_000
STATIC = (1.0, 2.0, 3.0, 4.0)
BAD_N = (0, N - 1, N + 1, 2**32 - 1)
BAD_MODE = (lib.MLB_MODE_COUNT, 99, 2**32 - 1)
ODD_TTL = (0, SEC // 2, SEC, 2 * SEC, 2**64 - 1)


def _make():
    cfg = ffi.new("mlb_dp_config_t *")
    lib.mlb_dp_config_default(cfg, N, 1)
    cfg.mode = lib.MLB_MODE_SED
    cfg.flow_capacity = 64
    dp = ffi.gc(lib.mlb_dp_create(cfg), lib.mlb_dp_destroy)
    for i, w in enumerate(STATIC):
        lib.mlb_dp_set_server(dp, i, i, lib.MLB_ADMIN_UP, w)
    region = ffi.new("mlb_region_t *")
    assert lib.mlb_region_init(region, lib.mlb_region_size(), N, 1, GEN, SEC // 4,
                               b"fuzz", 0) == lib.MLB_OK
    return dp, region


def _valid(n: int, mode: int, w: list[float], dp_gen: int, dp_t: int, ttl: int,
           now: int) -> bool:
    if n != N or mode >= lib.MLB_MODE_COUNT or dp_gen != GEN or dp_t > now:
        return False
    if not all(math.isfinite(x) and x >= 0 for x in w) or not any(x > 0 for x in w):
        return False
    return now - dp_t <= ttl


def _weights(rng: np.random.Generator, kind: int) -> np.ndarray:
    w = rng.uniform(0.01, 100.0, size=lib.MLB_MAX_SERVERS)
    bad = rng.integers(0, N)
    if kind == 1:
        w[bad] = np.nan
    elif kind == 2:
        w[bad] = np.inf * rng.choice([-1, 1])
    elif kind == 3:
        w[bad] = -rng.uniform(1e-300, 1e6)
    elif kind == 4:
        w[:N] = 0.0
    elif kind == 5:   # raw garbage bits
        w = rng.integers(0, 2**63, size=lib.MLB_MAX_SERVERS, dtype=np.uint64).view(np.float64)
    return w


def test_fuzzed_msg_in_never_applied_when_invalid() -> None:
    rng = np.random.default_rng(20261123)
    dp, region = _make()
    now = 10 * SEC
    applied = rejected = 0
    wbuf = np.zeros(lib.MLB_MAX_SERVERS)
    for i in range(FRAMES):
        now += 1_000_000
        r = rng.random(8)
        n = N if r[0] < 0.8 else BAD_N[int(r[6] * len(BAD_N))]
        mode = int(rng.integers(0, lib.MLB_MODE_COUNT)) if r[1] < 0.85 else \
            BAD_MODE[int(r[6] * len(BAD_MODE))]
        kind = 0 if r[2] < 0.6 else int(rng.integers(1, 6))
        dp_gen = GEN if r[3] < 0.85 else int(rng.integers(0, 2**63))
        age = int(rng.integers(0, 3 * SEC))
        dp_t = now - age if r[4] < 0.9 else now + int(rng.integers(1, 10 * SEC))
        ttl = ODD_TTL[int(r[7] * len(ODD_TTL))] if r[5] < 0.3 \
            else int(rng.integers(SEC // 10, 4 * SEC))
        wbuf[:] = _weights(rng, kind)
        before = [lib.mlb_dp_weight(dp, j) for j in range(N)]
        m = lib.mlb_in_begin(region)
        m.daemon_gen = 1 + (i % 3 == 0)
        m.msg_seq = i + 1
        m.dp_gen = dp_gen
        m.dp_t_ns = dp_t
        m.ttl_ns = ttl
        m.mode = mode
        m.n_servers = n
        ffi.memmove(m.weight, ffi.from_buffer(wbuf), wbuf.nbytes)
        lib.mlb_in_commit(region, m)
        rc = lib.mlb_dp_apply(dp, region, now)
        after = [lib.mlb_dp_weight(dp, j) for j in range(N)]
        sent = wbuf[:N].tolist()
        ok = _valid(n, mode, sent, dp_gen, dp_t, ttl, now)
        if rc == lib.MLB_APPLY_ACCEPTED:
            applied += 1
            assert ok, (i, n, mode, sent, dp_gen, dp_t, ttl, now)
            assert after == sent, (i, after, sent)
        else:
            rejected += 1
            assert after in (before, list(STATIC)), (i, rc, before, after, sent)
            if not ok:
                assert rc != lib.MLB_APPLY_NONE, (i, "an invalid new frame was not judged")
        assert all(math.isfinite(x) and x >= 0 for x in after)
    # both branches were exercised, many times
    assert applied > FRAMES // 10 and rejected > FRAMES // 4, (applied, rejected)
