"""A small test writer of the region: plays the data plane until the
simulator's real-time data plane exists.

    dp = FakeDataPlane.create("mlb-test-123", n_servers=4, n_workers=2)
    dp.publish(active=[1, 2, 3, 4], new_flows=[10, 20, 30, 40],
               fct={0: [0.1, 0.2]}, age={1: [0.5]})
    msg = dp.read_in()          # the daemon's latest msg_in, or None
    dp.close(unlink=True)

Also runnable as a process (``python tests/fakedp.py NAME --servers N``),
publishing a frame every ``--interval-ms`` until SIGTERM, for manual runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marllb.daemon._core import ffi, lib  # noqa: E402
from marllb.daemon.shm import Region, unlink  # noqa: E402


def unique_name(tag: str = "t") -> str:
    return f"mlb-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


class FakeDataPlane:
    """Owns a region; publishes msg_out frames with chosen counters and samples."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.frame_no = 0
        self.n_servers = region.n_servers
        self.n_workers = region.n_workers
        self.t0 = time.monotonic_ns()
        self.new_flows = [0] * self.n_servers
        self.static_weight = [1.0] * self.n_servers
        self.admin = [lib.MLB_ADMIN_UP] * self.n_servers
        self._in = ffi.new("mlb_msg_in_t *")

    @classmethod
    def create(
        cls, name: str, n_servers: int, n_workers: int = 1, *,
        generation: int | None = None, replace: bool = True,
        publish_interval_ns: int = 50_000_000,
    ) -> FakeDataPlane:
        region = Region.create(
            name, n_servers, n_workers, generation=generation, replace=replace,
            publish_interval_ns=publish_interval_ns,
        )
        return cls(region)

    @property
    def name(self) -> str:
        return self.region.name

    @property
    def generation(self) -> int:
        return self.region.generation

    def now_ns(self) -> int:
        """The fake data plane's clock: monotonic, starting near 1 s."""
        return time.monotonic_ns() - self.t0 + 1_000_000_000

    def publish(
        self,
        *,
        t_ns: int | None = None,
        active: Sequence[Any] | None = None,
        new_flows: Sequence[Any] | None = None,
        static_weight: Sequence[Any] | None = None,
        admin: Sequence[int] | None = None,
        fct: Mapping[int, Sequence[float]] | None = None,
        age: Mapping[int, Sequence[float]] | None = None,
        worker: int = 0,
        n_servers_field: int | None = None,
        raw_fct: Mapping[int, Sequence[float]] | None = None,
    ) -> int:
        """Publish one msg_out frame; returns its t_ns.

        ``fct``/``age`` map server index -> sample values (seconds) put into
        ``worker``'s reservoir, stamped with t_ns.  Values are written as
        given (NaN, negative, huge: garbage tests)."""
        t = self.now_ns() if t_ns is None else int(t_ns)
        n = self.n_servers
        if new_flows is not None:
            self.new_flows = list(new_flows)
        if static_weight is not None:
            self.static_weight = list(static_weight)
        if admin is not None:
            self.admin = list(admin)
        self.region.heartbeat(t)
        with self.region.write_out() as f:
            self.frame_no += 1
            m = f.meta
            m.frame_no = self.frame_no
            m.t_ns = t
            m.dp_gen = self.region.generation
            m.n_servers = n if n_servers_field is None else n_servers_field
            m.n_workers = self.n_workers
            m.active_mode = lib.MLB_MODE_SED
            for i in range(n):
                s = f.servers[i]
                s.id = i
                s.admin_state = self.admin[i]
                s.static_weight = self.static_weight[i]
                s.weight = self.static_weight[i]
                s.new_flows = int(self.new_flows[i]) & (2**64 - 1)
                s.active_flows = int(active[i]) & (2**64 - 1) if active is not None else 0
            for w in range(self.n_workers):
                for i in range(n):
                    for k in range(lib.MLB_RES_KINDS):
                        f.res[w][i][k].count = 0
                        f.res[w][i][k].n_seen = 0
            for kind, samples in ((lib.MLB_RES_FCT, fct), (lib.MLB_RES_AGE, age)):
                for i, values in (samples or {}).items():
                    r = f.res[worker][i][kind]
                    vals = list(values)[: lib.MLB_RESERVOIR_K]
                    stamp = (t >> lib.MLB_SAMPLE_T_SHIFT) & 0xFFFFFFFF   # mlb_shm.h
                    for j, v in enumerate(vals):
                        r.s[j].t = stamp
                        r.s[j].value = float(v)
                    r.count = len(vals)
                    r.n_seen = len(vals)
        return t

    def read_in(self) -> Any | None:
        """A copy of the latest msg_in, or None before the daemon's first publish."""
        try:
            self.region.snapshot_in(self._in)
        except LookupError:
            return None
        return self._in

    def weights(self) -> list[float] | None:
        m = self.read_in()
        if m is None:
            return None
        return [float(m.weight[i]) for i in range(int(m.n_servers))]

    def close(self, unlink_region: bool = True) -> None:
        """Unmap (and unlink) the region; a second call does nothing."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        name = self.region.name
        self.region.close()
        if unlink_region:
            unlink(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="publish fake msg_out frames until SIGTERM")
    ap.add_argument("name")
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--interval-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    dp = FakeDataPlane.create(args.name, args.servers, args.workers)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    flows = [0] * args.servers
    k = 0
    try:
        while not stop:
            k += 1
            flows = [c + (i + 1) for i, c in enumerate(flows)]
            dp.publish(active=[(k + i) % 7 for i in range(args.servers)], new_flows=flows,
                       fct={i: [0.05 * (i + 1)] * 8 for i in range(args.servers)})
            time.sleep(args.interval_ms / 1000)
    finally:
        dp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
