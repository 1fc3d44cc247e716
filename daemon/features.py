"""Per-server features from one msg_out view: THE feature implementation.

Shared by the daemon (every tick), the simulator's training env and the
evaluation, so a learned policy sees in production exactly what it saw in
training.  Input is a cffi ``mlb_out_view_t *`` (``Region.snapshot_view`` or
``lib.mlb_out_snapshot_view``): msg_out with each server's reservoirs already
merged across workers in C.  Reservoir summaries come from ONE call of
``lib.mlb_reservoir_stats_many``; everything else is vectorised numpy over the
server table read through ``ffi.buffer`` (no per-server Python loops).

Robustness: whatever the data plane wrote (NaN, inf, negative or huge values,
empty reservoirs, a garbage server count) leaves this module finite,
non-negative and bounded.  The only state is what rates need: the previous
frame's counters and time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from marllb.daemon._core import ffi, lib

MAX_SERVERS: int = lib.MLB_MAX_SERVERS
DEFAULT_DECAY_PER_S = 0.9

# Bounds applied to every value that leaves this module.
MAX_COUNT = 1e12        # flows (active, counters)
MAX_RATE = 1e9          # new flows per second
MAX_SECONDS = 1e6       # FCT / age statistics, seconds
MAX_WEIGHT = 1e9        # static / in-force weights

STAT_NAMES = ("mean", "p90", "std", "dmean", "dp90")

# The columns of observation_matrix(), in order.
FEATURE_NAMES: tuple[str, ...] = (
    "active",
    "new_flow_rate",
    *(f"fct_{s}" for s in STAT_NAMES),
    "fct_count",
    *(f"age_{s}" for s in STAT_NAMES),
    "age_count",
    "static_weight",
    "up",
)

# numpy views of the C structs (layout checked against cffi at import).
SERVER_DTYPE = np.dtype(
    [
        ("id", "<u4"),
        ("admin_state", "<u4"),
        ("static_weight", "<f8"),
        ("weight", "<f8"),
        ("new_flows", "<u8"),
        ("completed_flows", "<u8"),
        ("active_flows", "<u8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("timeouts", "<u8"),
    ]
)
STATS_DTYPE = np.dtype(
    [
        ("mean", "<f8"),
        ("std", "<f8"),
        ("p90", "<f8"),
        ("dmean", "<f8"),
        ("dp90", "<f8"),
        ("count", "<u4"),
        ("_pad", "<u4"),
    ]
)
META_DTYPE = np.dtype(
    [
        ("frame_no", "<u8"),
        ("t_ns", "<u8"),
        ("dp_gen", "<u8"),
        ("n_servers", "<u4"),
        ("n_workers", "<u4"),
        ("active_mode", "<u4"),
        ("weights_source", "<u4"),
        ("applied_daemon_gen", "<u8"),
        ("applied_msg_seq", "<u8"),
        ("msg_in_accepted", "<u8"),
        ("msg_in_rej_stale", "<u8"),
        ("msg_in_rej_gen", "<u8"),
        ("msg_in_rej_invalid", "<u8"),
        ("fallbacks", "<u8"),
        ("untracked_flows", "<u8"),
    ]
)
_META_KEYS = ("active_mode", "weights_source", "msg_in_accepted", "msg_in_rej_stale",
              "msg_in_rej_gen", "msg_in_rej_invalid", "fallbacks", "untracked_flows")
for _name in META_DTYPE.names:
    assert META_DTYPE.fields[_name][1] == ffi.offsetof("mlb_out_meta_t", _name)
assert SERVER_DTYPE.itemsize == ffi.sizeof("mlb_server_stats_t")
assert STATS_DTYPE.itemsize == ffi.sizeof("mlb_stats_t")
for _name in SERVER_DTYPE.names:
    assert SERVER_DTYPE.fields[_name][1] == ffi.offsetof("mlb_server_stats_t", _name)
for _name in STATS_DTYPE.names:
    assert STATS_DTYPE.fields[_name][1] == ffi.offsetof("mlb_stats_t", _name)


def _finite(x: np.ndarray, hi: float, lo: float = 0.0) -> np.ndarray:
    """float64 copy with NaN -> lo, +inf -> hi, -inf -> lo, clipped to [lo, hi]."""
    out = np.clip(np.asarray(x, dtype=np.float64), lo, hi)   # a copy; NaN stays NaN
    out[np.isnan(out)] = lo
    return out


def _finite_counted(x: np.ndarray, hi: float, lo: float = 0.0) -> tuple[np.ndarray, int]:
    """``_finite(x)`` and how many values it changed (NaN, inf, outside [lo, hi])."""
    x = np.asarray(x, dtype=np.float64)
    out = np.clip(x, lo, hi)
    nan = np.isnan(out)
    n_bad = int(np.count_nonzero(out != x))   # NaN != NaN: counted here
    out[nan] = lo
    return out, n_bad


@dataclass
class Features:
    """Sanitised per-server features over the n active servers of one frame."""

    server_id: np.ndarray          # (n,) uint32
    admin_state: np.ndarray        # (n,) uint32, MLB_ADMIN_*; unknown values -> DOWN
    static_weight: np.ndarray      # (n,) float64 >= 0
    weight: np.ndarray             # (n,) float64 >= 0, the weight in force
    active: np.ndarray             # (n,) float64 >= 0, active flows
    new_flow_rate: np.ndarray      # (n,) float64 >= 0, new flows / s of data-plane time
    fct: np.ndarray                # (n, 5) float64 seconds: mean, p90, std, dmean, dp90
    fct_count: np.ndarray          # (n,) int64 live samples (0: stats are 0)
    age: np.ndarray                # (n, 5) float64 seconds, in-progress flow ages
    age_count: np.ndarray          # (n,) int64
    t_ns: int = 0                  # data-plane time of the frame
    frame_no: int = 0
    dp_gen: int = 0
    sanitized: int = 0             # values of this frame that were garbage and replaced
    meta: dict[str, int] = field(default_factory=dict)  # a few frame counters

    @property
    def n(self) -> int:
        return int(self.server_id.shape[0])

    @property
    def up(self) -> np.ndarray:
        return self.admin_state == lib.MLB_ADMIN_UP

    @classmethod
    def empty(cls, n: int = 0) -> Features:
        z = np.zeros(n)
        return cls(
            server_id=np.arange(n, dtype=np.uint32),
            admin_state=np.zeros(n, dtype=np.uint32),
            static_weight=np.ones(n),
            weight=np.ones(n),
            active=z.copy(),
            new_flow_rate=z.copy(),
            fct=np.zeros((n, 5)),
            fct_count=np.zeros(n, dtype=np.int64),
            age=np.zeros((n, 5)),
            age_count=np.zeros(n, dtype=np.int64),
        )


# mlb_stats_t as 6 doubles: mean, std, p90, dmean, dp90, (count, pad); reorder
# the first five to STAT_NAMES (mean, p90, std, dmean, dp90)
_STAT_COLS = np.array([0, 2, 1, 3, 4])


class FeatureExtractor:
    """Turns successive views into Features; keeps the previous counters for rates."""

    def __init__(self, decay_per_s: float = DEFAULT_DECAY_PER_S) -> None:
        if not (0.0 < decay_per_s <= 1.0):
            raise ValueError(f"decay_per_s must be in (0, 1], got {decay_per_s}")
        self.decay_per_s = float(decay_per_s)
        self._stats = ffi.new("mlb_stats_t[]", 2 * MAX_SERVERS)
        buf = ffi.buffer(self._stats)
        self._stats_f64 = np.frombuffer(buf, dtype=np.float64).reshape(2 * MAX_SERVERS, 6)
        self._stats_cnt = np.frombuffer(buf, dtype=np.uint32).reshape(2 * MAX_SERVERS, 12)[:, 10]
        self._view: Any = None
        self._view_np: tuple[np.ndarray, np.ndarray, Any] = ()  # type: ignore[assignment]
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame (e.g. after a data-plane restart)."""
        self._prev_gen: int | None = None
        self._prev_t_ns = 0
        self._prev_frame = 0
        self._prev_ids: np.ndarray | None = None
        self._prev_new: np.ndarray | None = None
        self._prev_rate: np.ndarray | None = None

    def _views(self, view: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        """numpy views of a view's meta and server table, and its merged
        reservoirs: made once per view object (the daemon reuses one)."""
        if view is not self._view:
            self._view_np = (
                np.frombuffer(ffi.buffer(ffi.addressof(view, "meta"), META_DTYPE.itemsize),
                              dtype=META_DTYPE),
                np.frombuffer(ffi.buffer(view.servers), dtype=SERVER_DTYPE),
                ffi.cast("mlb_reservoir_t *", view.merged),
            )
            self._view = view        # holds it: the views above point into it
        return self._view_np

    def update(self, view: Any) -> Features:
        """Features of one ``mlb_out_view_t *`` (copied out; the view may be reused)."""
        meta_np, srv_np, merged = self._views(view)
        mi = dict(zip(META_DTYPE.names, meta_np[0].item(), strict=True))
        n_raw = mi["n_servers"]
        n = min(max(n_raw, 0), MAX_SERVERS)
        t_ns = mi["t_ns"]
        frame_no = mi["frame_no"]
        dp_gen = mi["dp_gen"]

        srv = srv_np[:n].copy()
        lib.mlb_reservoir_stats_many(merged, 2 * n, t_ns, self.decay_per_s, self._stats)
        vals = self._stats_f64[: 2 * n, _STAT_COLS]        # (2n, 5) copy, FCT/AGE interleaved
        counts = self._stats_cnt[: 2 * n].astype(np.int64)
        vals[counts == 0] = 0.0                             # empty reservoir: NaN -> 0, count 0
        vals, bad_stats = _finite_counted(vals, MAX_SECONDS)
        vals = vals.reshape(n, 2, 5)
        counts = counts.reshape(n, 2)
        fct, age = vals[:, lib.MLB_RES_FCT], vals[:, lib.MLB_RES_AGE]
        fct_count, age_count = counts[:, lib.MLB_RES_FCT], counts[:, lib.MLB_RES_AGE]

        admin = srv["admin_state"].copy()
        bad_admin = admin > lib.MLB_ADMIN_DOWN
        admin[bad_admin] = lib.MLB_ADMIN_DOWN
        sw, bad_sw = _finite_counted(srv["static_weight"], MAX_WEIGHT)
        w, bad_w = _finite_counted(srv["weight"], MAX_WEIGHT)
        act, bad_act = _finite_counted(srv["active_flows"], MAX_COUNT)
        sanitized = (
            bad_stats + int(np.count_nonzero(bad_admin)) + int(n_raw != n)
            + bad_sw + bad_w + bad_act
        )
        ids = srv["id"].copy()
        new_flows = srv["new_flows"].astype(np.float64)

        rate = self._rate(ids, new_flows, t_ns, frame_no, dp_gen)

        self._prev_gen = dp_gen
        self._prev_t_ns = t_ns
        self._prev_frame = frame_no
        self._prev_ids = ids
        self._prev_new = new_flows
        self._prev_rate = rate

        return Features(
            server_id=ids,
            admin_state=admin,
            static_weight=sw,
            weight=w,
            active=act,
            new_flow_rate=rate,
            fct=fct,
            fct_count=fct_count,
            age=age,
            age_count=age_count,
            t_ns=t_ns,
            frame_no=frame_no,
            dp_gen=dp_gen,
            sanitized=sanitized,
            meta={k: mi[k] for k in _META_KEYS},
        )

    def _rate(
        self, ids: np.ndarray, new_flows: np.ndarray, t_ns: int, frame_no: int, dp_gen: int
    ) -> np.ndarray:
        n = ids.shape[0]
        same_table = (
            self._prev_gen == dp_gen
            and self._prev_ids is not None
            and self._prev_ids.shape[0] == n
            and bool(np.array_equal(self._prev_ids, ids))
        )
        if not same_table:
            return np.zeros(n)
        if frame_no == self._prev_frame or t_ns <= self._prev_t_ns:
            # the same frame again (daemon faster than the data plane) or a
            # clock that did not advance: keep the last estimate
            return self._prev_rate.copy()
        dt = (t_ns - self._prev_t_ns) * 1e-9
        delta = new_flows - self._prev_new     # a counter that went back -> negative -> 0
        return _finite(delta / dt, MAX_RATE)


def observation_into(features: Features, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (n, len(FEATURE_NAMES)), any float dtype, with the raw
    observation columns (no allocation; NaN/inf are left to the caller)."""
    f = features
    out[:, 0] = f.active
    out[:, 1] = f.new_flow_rate
    out[:, 2:7] = f.fct
    out[:, 7] = f.fct_count
    out[:, 8:13] = f.age
    out[:, 13] = f.age_count
    out[:, 14] = f.static_weight
    out[:, 15] = f.up
    return out


def observation_matrix(features: Features) -> np.ndarray:
    """The per-server observation of a learned policy: (n, len(FEATURE_NAMES)) float32."""
    obs = observation_into(features, np.empty((features.n, len(FEATURE_NAMES))))
    obs = np.nan_to_num(obs, nan=0.0, posinf=MAX_COUNT, neginf=0.0)
    return obs.astype(np.float32)
