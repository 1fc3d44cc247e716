"""One tick's work: snapshot -> merge (C) -> features -> policy -> sanitize -> publish.

``TickPipeline.run_once`` does one tick against an attached region and returns
a ``TickRecord`` (immutable once made: the control socket and metrics read the
latest one from other threads).  Scheduling, attach and state live in loop.py.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from marllb.daemon._core import ffi, lib
from marllb.daemon.features import FeatureExtractor, Features
from marllb.daemon.policies import Policy, PolicyError, make_policy
from marllb.daemon.sanitize import is_finite_output, sanitize_weights
from marllb.daemon.shm import Region, RegionBusy

FLAG_HOLD = 1
FLAG_FALLBACK = 2
_ZEROS = bytes(8 * lib.MLB_MAX_SERVERS)


def policy_id(name: str) -> int:
    """A stable 32-bit id for a policy name (msg_in.policy_id)."""
    return zlib.crc32(name.encode())


class PolicySlot:
    """The configured policy plus its heuristic fallback.

    ``act`` never raises and always returns finite weights from somewhere: the
    policy when it works, otherwise the fallback, with the reason recorded."""

    def __init__(self, name: str, checkpoint: str | None, fallback: str) -> None:
        self.name = name
        self.checkpoint = checkpoint
        self.fallback = make_policy(fallback)
        self.policy: Policy | None = None
        self.load_error: str | None = None
        self.fallback_reason: str | None = None
        self.reset_error: str | None = None   # the policy cannot serve this server count
        self.n_servers = -1
        try:
            self.policy = make_policy(name, checkpoint=checkpoint)
        except PolicyError as e:
            self.load_error = str(e)
            self.fallback_reason = f"policy {name!r} failed to load: {e}"

    @classmethod
    def build_strict(cls, name: str, checkpoint: str | None, fallback: str) -> PolicySlot:
        """Like the constructor, but raise PolicyError instead of falling back
        (a reload or ``policy set`` keeps the old policy when the new one is bad)."""
        slot = cls(name, checkpoint, fallback)
        if slot.policy is None:
            raise PolicyError(slot.load_error or f"policy {name!r} failed to load")
        return slot

    def reset(self, n_servers: int) -> None:
        """New server count or data-plane generation: reset per-agent state.

        A policy that cannot serve ``n_servers`` (e.g. a checkpoint trained
        for another count) is skipped until the next reset, not dropped."""
        self.n_servers = n_servers
        self.fallback.reset(n_servers)
        self.reset_error = None
        if self.policy is not None:
            try:
                self.policy.reset(n_servers)
            except Exception as e:  # noqa: BLE001 - a broken policy must not stop the daemon
                self.reset_error = (f"policy {self.name!r} cannot serve {n_servers} servers: "
                                    f"{type(e).__name__}: {e}")

    def act(self, f: Features) -> tuple[np.ndarray, Policy, str | None]:
        """(raw weights, the policy that produced them, fallback reason or None)."""
        if f.n != self.n_servers:
            self.reset(f.n)
        pol = self.policy
        if pol is None:
            return self.fallback.act(f), self.fallback, self.fallback_reason
        if self.reset_error is not None:
            self.fallback_reason = self.reset_error
            return self.fallback.act(f), self.fallback, self.reset_error
        try:
            w = pol.act(f)
            reason = None if is_finite_output(w, f.n) else \
                f"policy {self.name!r} returned non-finite or mis-shaped weights"
        except Exception as e:  # noqa: BLE001
            reason = f"policy {self.name!r} failed: {type(e).__name__}: {e}"
        if reason is None:
            self.fallback_reason = None
            return np.asarray(w, dtype=np.float64).reshape(-1), pol, None
        self.fallback_reason = reason
        return self.fallback.act(f), self.fallback, reason


@dataclass(frozen=True)
class TickRecord:
    """What one tick saw and did (read by status/metrics from other threads)."""

    mono_ns: int
    features: Features
    weights: np.ndarray
    policy_name: str          # the policy that produced the weights
    mode: int
    fallback_reason: str | None
    held: bool
    published: bool
    msg_seq: int
    clipped: int = 0          # up servers whose ratio the w_min/w_max bound changed


class Publisher:
    """Writes msg_in: the daemon's generation, sequence, TTL and the weights."""

    def __init__(self, daemon_gen: int) -> None:
        self.daemon_gen = daemon_gen
        self.msg_seq = 0
        self.publishes = 0

    def publish(self, region: Region, f: Features, weights: np.ndarray, mode: int,
                policy_name: str, ttl_ns: int, flags: int) -> int:
        n = f.n
        w = np.ascontiguousarray(weights, dtype=np.float64)
        self.msg_seq += 1
        with region.write_in() as m:
            m.daemon_gen = self.daemon_gen
            m.msg_seq = self.msg_seq
            m.dp_gen = f.dp_gen
            m.dp_t_ns = f.t_ns
            m.ttl_ns = ttl_ns
            m.wall_ns = time.time_ns()
            m.policy_id = policy_id(policy_name)
            m.mode = mode
            m.n_servers = n
            m.flags = flags
            m.policy_name = policy_name.encode()[: lib.MLB_POLICY_NAME_LEN - 1]
            ffi.memmove(m.weight, w, 8 * n)
            if n < lib.MLB_MAX_SERVERS:
                ffi.memmove(ffi.addressof(m.weight, n), _ZEROS, 8 * (lib.MLB_MAX_SERVERS - n))
        self.publishes += 1
        return self.msg_seq


class TickPipeline:
    """The per-tick stages, timed.  Owns the view buffer, RNG and extractor."""

    def __init__(self, slot: PolicySlot, daemon_gen: int, decay_per_s: float = 0.9,
                 seed: int | None = None) -> None:
        self.slot = slot
        self.extractor = FeatureExtractor(decay_per_s)
        self.publisher = Publisher(daemon_gen)
        self.view = ffi.new("mlb_out_view_t *")
        self.rng = ffi.new("mlb_rng_t *")
        lib.mlb_rng_seed(self.rng, daemon_gen if seed is None else seed)
        self.snapshot_busy = 0
        self.clipped_ticks = 0    # ticks where the ratio bound changed a weight
        self.last_durations = [0] * 6

    def reset(self) -> None:
        """After (re)attach: forget rates and per-agent state."""
        self.extractor.reset()
        self.slot.n_servers = -1

    def run_once(
        self, region: Region, *, w_min: float, w_max: float, ttl_ns: int,
        hold: np.ndarray | None = None, hold_mode: int = 0, hold_name: str = "",
        publish: bool = True, stale_check: Any = None,
    ) -> TickRecord | None:
        """One tick. None when no frame could be read (none yet, or busy).

        ``hold``: weights to republish instead of deciding (lbctl hold on).
        ``stale_check(features) -> bool``: True = do not publish this frame."""
        pc = time.perf_counter_ns
        t0 = pc()
        try:
            region.snapshot_view(self.view, self.rng)
        except LookupError:
            return None
        except RegionBusy:
            self.snapshot_busy += 1
            return None
        t1 = pc()
        f = self.extractor.update(self.view)
        t2 = pc()
        held = hold is not None and hold.shape[0] == f.n
        if held:
            raw, name, mode, reason = hold, hold_name, hold_mode, None
        else:
            raw, pol, reason = self.slot.act(f)
            name, mode = pol.name, pol.mode
        t3 = pc()
        san = sanitize_weights(raw, f, w_min, w_max)
        w = san.weights
        self.clipped_ticks += san.clipped > 0
        t4 = pc()
        do_publish = publish and f.n > 0 and not (stale_check is not None and stale_check(f))
        seq = 0
        if do_publish:
            flags = (FLAG_HOLD if held else 0) | (FLAG_FALLBACK if reason else 0)
            seq = self.publisher.publish(region, f, w, mode, name, ttl_ns, flags)
        t5 = pc()
        self.last_durations = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0]
        return TickRecord(
            mono_ns=time.monotonic_ns(), features=f, weights=w, policy_name=name, mode=mode,
            fallback_reason=reason, held=held, published=do_publish, msg_seq=seq,
            clipped=san.clipped,
        )
