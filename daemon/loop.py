"""The daemon's main loop: attach, deadline-scheduled ticks, state, reload, hold.

Ticks are due at ``start + k * interval`` on the monotonic clock (no drift from
the work itself).  A tick that ends past the next deadline skips the missed
ones and counts them as overruns.  The loop sleeps in ``select`` on a wake-up
pipe that signals write to, so SIGTERM/SIGHUP act at once.

Threads: the loop runs in the main thread; the control socket and metrics
read ``Daemon.last`` (an immutable TickRecord) and counters from their own
threads, and swap policy/config under ``Daemon.lock``.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import threading
import time
from typing import Any

import numpy as np

from marllb.daemon._core import lib
from marllb.daemon.attach import Attacher, Backoff
from marllb.daemon.config import Config, ConfigError, load_config
from marllb.daemon.features import Features
from marllb.daemon.logs import get_logger
from marllb.daemon.notify import Notifier
from marllb.daemon.policies import PolicyError
from marllb.daemon.rollout import TrajectoryRecorder, build_slot, policy_slot
from marllb.daemon.shm import RegionError, new_generation
from marllb.daemon.tick import PolicySlot, TickPipeline, TickRecord
from marllb.daemon.timing import StageTimes

STATUS_EVERY_NS = 1_000_000_000
# a non-running state that lasts is logged again this often (journal rate limit)
STATE_REMIND_NS = 60_000_000_000
# consecutive busy snapshots before the daemon says it is not publishing
BUSY_TICKS = 3
# consecutive new msg_out frames, after our first publish, that show the data
# plane on its static weights before status says our weights are not in force
NOT_IN_FORCE_FRAMES = 3
# wake this much before a deadline and spin the rest: select()'s wake-up
# latency and timer slack would otherwise show up as tick jitter
SPIN_NS = 300_000


class Daemon:
    def __init__(
        self, cfg: Config, *, config_path: str | None = None,
        overrides: dict[str, Any] | None = None, notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.notifier = notifier or Notifier()
        self.log = get_logger()
        self.lock = threading.RLock()
        self.reload_lock = threading.Lock()
        self.started_mono = time.monotonic_ns()
        self.daemon_gen = new_generation()
        self.attacher = Attacher(cfg.region)
        self.slot = build_slot(cfg, log=self._event)
        if self.slot.load_error:
            self.log.error("policy_load_failed", policy=cfg.policy, checkpoint=cfg.checkpoint,
                           error=self.slot.load_error, fallback=cfg.fallback_policy)
        self.pipeline = TickPipeline(self.slot, self.daemon_gen, cfg.decay_per_s)
        self.traj = self._open_trajectory(cfg)
        self.times = StageTimes()
        self.backoff = Backoff(cfg.attach_backoff_max_ms / 1e3)
        # counters
        self.ticks = 0
        self.overruns = 0
        self.frames_seen = 0
        self.fallback_ticks = 0
        self.sanitized_frames = 0
        self.sanitized_values = 0
        self.fallback_events = 0
        self.reloads = 0
        self.reload_failures = 0
        # state
        self.state = "waiting"
        self.reason: str | None = "waiting for data plane"
        self.last: TickRecord | None = None
        self.last_publish_mono: int | None = None
        self.last_frame_no = -1
        self.last_frame_gen = -1
        self.last_frame_mono = 0
        self.hold = False
        self.hold_weights: np.ndarray | None = None
        self.hold_mode = 0
        self.hold_name = ""
        self.last_reload: dict[str, Any] | None = None
        self.policy_override: tuple[str, str | None] | None = None
        self.ready_sent = False
        self.stop_requested = False
        self.reload_requested = False
        self.metrics_address: str | None = None
        self.socket_path: str | None = None
        self._last_status_ns = 0
        self._in_fallback = False
        self._state_logged_ns = 0
        # "is the daemon actually in charge?" bookkeeping (see _in_force_reason)
        self.busy_ticks = 0
        self.busy_since_mono: int | None = None
        self.weights_in_force: bool | None = None   # None: not known yet
        self._static_frames = 0
        self._first_pub_frame: int | None = None
        self._checked_frame = -1
        self._not_in_force: str | None = None
        self._rej_base: tuple[int, int, int] | None = None
        self._seen_base: tuple[int, ...] | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- signals -----------------------------------------------------------------
    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload_requested = True

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass

    def _sleep_until(self, deadline_ns: int) -> None:
        mono = time.monotonic_ns
        while not self.stop_requested and not self.reload_requested:
            left = deadline_ns - mono()
            if left <= 0:
                return
            if left <= SPIN_NS:
                while mono() < deadline_ns:
                    pass
                return
            r, _, _ = select.select([self._wake_r], [], [], (left - SPIN_NS) / 1e9)
            if r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass

    # -- state -------------------------------------------------------------------
    def _set_state(self, state: str, reason: str | None) -> None:
        """Change state; logged on every change and, while not running, again every
        STATE_REMIND_NS (the reasons are stable strings, so a lasting problem is not
        one log line per tick)."""
        now = time.monotonic_ns()
        if (state, reason) != (self.state, self.reason):
            level = self.log.info if state == "running" else self.log.warning
            level("state", state=state, reason=reason)
            self.state, self.reason = state, reason
            self._state_logged_ns = now
            self._send_status(force=True)
        elif state != "running" and now - self._state_logged_ns >= STATE_REMIND_NS:
            self.log.warning("state_persists", state=state, reason=reason)
            self._state_logged_ns = now

    @property
    def publishing(self) -> bool:
        """True when the latest tick read a frame and published weights for it."""
        return (self.attacher.current is not None and self.busy_ticks < BUSY_TICKS
                and self.last is not None and self.last.published
                and self.state != "waiting")

    def status_line(self) -> str:
        if self.state == "waiting":
            return f"waiting: {self.reason}"
        p99 = self.times.percentiles()["total"]["p99_us"]
        pub = "never" if self.last_publish_mono is None else \
            f"{(time.monotonic_ns() - self.last_publish_mono) / 1e9:.1f}s ago"
        pol = self.last.policy_name if self.last else self.slot.name
        line = f"{self.state}: tick {self.ticks}, policy {pol}, p99 {p99:.0f}us, last publish {pub}"
        if self.state == "degraded" and self.reason:
            line += f" ({self.reason})"
        return line

    def _send_status(self, force: bool = False) -> None:
        now = time.monotonic_ns()
        if force or now - self._last_status_ns >= STATUS_EVERY_NS:
            self._last_status_ns = now
            self.notifier.status(self.status_line())

    # -- operator actions (control socket threads, or the loop for SIGHUP) ---------
    def reload(self, source: str = "SIGHUP") -> dict[str, Any]:
        """Re-read the config file (same CLI overrides) and rebuild the policy.

        A bad config or a policy that fails to load keeps the old ones."""
        with self.reload_lock:
            if self.ready_sent:  # before READY, systemd is still waiting for start-up
                self.notifier.reloading()
            try:
                result = self._reload()
            except Exception as e:  # noqa: BLE001 - a reload never kills the daemon
                result = {"ok": False, "error": f"reload failed: {type(e).__name__}: {e}"}
            finally:
                if self.ready_sent:  # READY only ever after the first good tick
                    self.notifier.ready()
            result["source"] = source
            result["mono_ns"] = time.monotonic_ns()
            self.last_reload = result
            if result["ok"]:
                self.reloads += 1
                self.log.info("reloaded", source=source, policy=self.cfg.policy,
                              checkpoint=self.cfg.checkpoint, tick_ms=self.cfg.tick_ms)
            else:
                self.reload_failures += 1
                self.log.error("reload_failed", source=source, error=result["error"],
                               kept="previous config and policy")
            self._send_status(force=True)
            return {k: v for k, v in result.items() if k != "mono_ns"}

    def _reload(self) -> dict[str, Any]:
        try:
            new = load_config(self.config_path, self.overrides)
        except ConfigError as e:
            return {"ok": False, "error": str(e)}
        try:
            slot = build_slot(new, strict=True, log=self._event)
        except PolicyError as e:
            return {"ok": False, "error": str(e)}
        notes = []
        for key in ("socket", "socket_mode", "socket_group", "metrics", "trajectory_log",
                    "trajectory_log_max_mb"):
            if getattr(new, key) != getattr(self.cfg, key):
                notes.append(f"{key} change needs a restart")
        with self.lock:
            old = self.cfg
            self.cfg = new
            self.policy_override = None
            self._swap_slot(slot)
            if new.region != old.region:
                self.attacher.detach()
                self.attacher = Attacher(new.region)
                self._set_state("waiting", f"waiting for data plane: region {new.region}")
            if new.decay_per_s != old.decay_per_s:
                self.pipeline.extractor.decay_per_s = new.decay_per_s
            self.backoff = Backoff(new.attach_backoff_max_ms / 1e3)
        return {"ok": True, "error": None, "notes": notes}

    def _swap_slot(self, slot: PolicySlot) -> None:
        with self.lock:
            self.slot = slot
            self.pipeline.slot = slot

    def set_policy(self, name: str, checkpoint: str | None = None) -> dict[str, Any]:
        """Switch the running policy (until the next reload); a bad one keeps the old."""
        try:
            slot = policy_slot(name, checkpoint, self.cfg.fallback_policy,
                               self.cfg.checkpoint_store, strict=True)
        except PolicyError as e:
            self.log.error("policy_set_failed", policy=name, error=str(e))
            return {"ok": False, "error": str(e)}
        self._swap_slot(slot)
        self.policy_override = (name, checkpoint)
        self.log.info("policy_set", policy=name, checkpoint=checkpoint)
        return {"ok": True, "error": None, "policy": name}

    def set_hold(self, on: bool) -> dict[str, Any]:
        with self.lock:
            if on and not self.hold:
                last = self.last
                if last is None or not last.published:
                    return {"ok": False, "error": "nothing published yet: no weights to hold"}
                self.hold_weights = last.weights.copy()
                self.hold_mode = last.mode
                self.hold_name = last.policy_name
            self.hold = on
            if not on:
                self.hold_weights = None
        self.log.info("hold", on=on)
        return {"ok": True, "error": None, "hold": on}

    # -- the loop --------------------------------------------------------------------
    def run(self) -> int:
        self.log.info("starting", region=self.cfg.region, policy=self.cfg.policy,
                      tick_ms=self.cfg.tick_ms, pid=os.getpid(),
                      daemon_gen=f"{self.daemon_gen:#x}")
        # everything allocated so far (imports, torch, config) is long-lived:
        # keep it out of the collector's way so a collection never stalls a tick
        gc.collect()
        gc.freeze()
        start = time.monotonic_ns()
        k = 0
        interval = self.cfg.tick_ns
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                self.reload("SIGHUP")
            if self.cfg.tick_ns != interval:
                interval = self.cfg.tick_ns
                start, k = time.monotonic_ns(), 0
            if self.attacher.current is None:
                if not self._attach():
                    self._sleep_until(time.monotonic_ns() + int(self.backoff.step() * 1e9))
                    continue
                start, k = time.monotonic_ns(), 0
            deadline = start + k * interval
            now = time.monotonic_ns()
            gone = self.attacher.check()
            if gone is not None:
                self._lost(gone)
                continue
            try:
                self._tick(now, now - deadline)
            except RegionError as e:   # e.g. truncated between check() and the tick
                self._lost(str(e))
                continue
            k += 1
            after = time.monotonic_ns()
            if after >= start + k * interval:
                k_next = (after - start) // interval + 1
                self.overruns += k_next - k
                k = k_next
            self._sleep_until(start + k * interval)
        self.log.info("stopping", ticks=self.ticks, overruns=self.overruns,
                      note="last weights left in place")
        self.notifier.stopping()
        self.attacher.detach()
        return 0

    def _lost(self, why: str) -> None:
        """Stop touching the region (detach) and wait for a valid one again."""
        self.log.warning("data_plane_lost", reason=why)
        self.attacher.detach()
        self.weights_in_force = None
        self._set_state("waiting", f"waiting for data plane: {why}")

    def _attach(self) -> bool:
        reason = self.attacher.try_attach()
        self.notifier.watchdog()
        if reason is not None:
            self._set_state("waiting", f"waiting for data plane: {reason}")
            self._send_status()
            return False
        self.backoff.reset()
        self.pipeline.reset()
        self.last_frame_no = -1
        self.last_frame_mono = time.monotonic_ns()
        self.busy_ticks = 0
        self.busy_since_mono = None
        self.weights_in_force = None
        self._static_frames = 0
        self._first_pub_frame = None
        self._checked_frame = -1
        self._not_in_force = None
        self._rej_base = None
        region = self.attacher.region
        self.log.info("attached", region=region.name, dp_gen=f"{region.generation:#x}",
                      n_servers=region.n_servers, n_workers=region.n_workers,
                      reattaches=self.attacher.reattaches)
        self._set_state("waiting", "attached; waiting for the first msg_out frame")
        return True

    def _is_stale(self, f: Features) -> bool:
        now = time.monotonic_ns()
        if f.frame_no != self.last_frame_no or f.dp_gen != self.last_frame_gen:
            self.last_frame_no, self.last_frame_gen = f.frame_no, f.dp_gen
            self.last_frame_mono = now
            self.frames_seen += 1
            return False
        return now - self.last_frame_mono > self.cfg.stale_after_ms * 1e6

    def _tick(self, start_ns: int, jitter_ns: int) -> None:
        cfg = self.cfg
        busy_before = self.pipeline.snapshot_busy
        with self.lock:
            hold = self.hold_weights if self.hold else None
            rec = self.pipeline.run_once(
                self.attacher.region, w_min=cfg.w_min, w_max=cfg.w_max, ttl_ns=cfg.ttl_ns,
                hold=hold, hold_mode=self.hold_mode, hold_name=self.hold_name,
                stale_check=self._is_stale,
            )
        self.notifier.watchdog()
        if rec is None:
            self._no_frame(self.pipeline.snapshot_busy != busy_before, start_ns)
            self._send_status()
            return
        self.busy_ticks = 0
        self.busy_since_mono = None
        self.ticks += 1
        if rec.features.sanitized:
            self.sanitized_frames += 1
            self.sanitized_values += rec.features.sanitized
        self.times.record(self.pipeline.last_durations, start_ns, jitter_ns)
        self.last = rec
        if self.traj is not None:
            self.traj.record(rec)      # never raises: an I/O error is counted
        if rec.published:
            self.last_publish_mono = rec.mono_ns
            if not self.ready_sent:
                self.ready_sent = True
                self.notifier.ready(self.status_line())
                self.log.info("ready", policy=rec.policy_name, n_servers=rec.features.n)
        if rec.fallback_reason:
            self.fallback_ticks += 1
            if not self._in_fallback:
                self.fallback_events += 1
                self.log.error("policy_fallback", reason=rec.fallback_reason,
                               fallback=rec.policy_name)
        elif self._in_fallback:
            self.log.info("policy_recovered", policy=rec.policy_name)
        self._in_fallback = bool(rec.fallback_reason)
        not_in_force = self._in_force_reason(rec)
        if rec.features.n == 0:
            self._set_state("degraded", "data plane reports no servers")
        elif not rec.published:
            self._set_state("degraded", "data plane stale: no new msg_out frame for over "
                            f"{cfg.stale_after_ms / 1e3:g}s")
        elif rec.fallback_reason:
            self._set_state("degraded", f"fallback to {rec.policy_name}: {rec.fallback_reason}")
        elif not_in_force is not None:
            self._set_state("degraded", not_in_force)
        else:
            self._set_state("running", None)
        self._send_status()

    def _no_frame(self, busy: bool, now_ns: int) -> None:
        """A tick that read no frame: none yet, or busy (a writer mid-write or stuck)."""
        if not busy:
            if self.last is None or self.state == "waiting":
                self._set_state("waiting", "attached; waiting for the first msg_out frame")
            return
        self.busy_ticks += 1
        if self.busy_since_mono is None:
            self.busy_since_mono = now_ns
        if self.busy_ticks >= BUSY_TICKS:
            # nothing is published while this lasts: the data plane's TTL will
            # expire our last weights and it falls back to its static ones
            self.weights_in_force = False if self.last is not None else self.weights_in_force
            self._set_state("degraded", "not publishing: msg_out is busy on every read "
                            "(frame counter left odd: a data-plane writer stuck or died "
                            "mid-write?)")

    def _in_force_reason(self, rec: TickRecord) -> str | None:
        """Why the data plane is NOT using our weights, judged from its msg_out
        frames (weights_source), or None when they are in force or it is too early
        to tell.  A frame is only evidence after we published and once the data
        plane has reacted to some msg_in (its accepted/rejected counters moved: a
        writer that never reads msg_in proves nothing); NOT_IN_FORCE_FRAMES
        consecutive such frames on static weights make the verdict."""
        f = rec.features
        meta = f.meta
        if not meta or f.n == 0:
            return None
        rej = (int(meta.get("msg_in_rej_stale", 0)), int(meta.get("msg_in_rej_gen", 0)),
               int(meta.get("msg_in_rej_invalid", 0)))
        seen = (int(meta.get("msg_in_accepted", 0)), *rej)
        if self._first_pub_frame is None:
            if rec.published:
                self._first_pub_frame = f.frame_no
                self._checked_frame = f.frame_no
                self._rej_base = rej
                self._seen_base = seen
            return None
        if f.frame_no == self._checked_frame:     # no new evidence: keep the verdict
            return self._not_in_force
        self._checked_frame = f.frame_no
        if int(meta.get("weights_source", 0)) == lib.MLB_SRC_DAEMON:
            self.weights_in_force = True
            self._static_frames = 0
            self._rej_base = rej
            self._not_in_force = None
            return None
        if seen == self._seen_base:      # it has not looked at any msg_in of ours yet
            return self._not_in_force
        self._static_frames += 1
        if self._static_frames < NOT_IN_FORCE_FRAMES:
            return self._not_in_force
        self.weights_in_force = False
        base = self._rej_base or (0, 0, 0)
        d_stale, d_gen, d_inv = (a - b for a, b in zip(rej, base, strict=True))
        why = "the data plane keeps its static weights"
        if d_stale >= max(d_gen, d_inv) and d_stale > 0:
            why += (": it rejects our msg_in as older than its TTL (TTL too short for the "
                    "tick and the data plane's clock? set ttl_ms / --ttl-ms)")
        elif d_gen > 0 and d_gen >= d_inv:
            why += ": it rejects our msg_in as computed for another data-plane generation"
        elif d_inv > 0:
            why += ": it rejects our msg_in as invalid"
        else:
            why += ": our weights expire between publishes (TTL shorter than the tick?)"
        self._not_in_force = f"weights not in force: {why}"
        return self._not_in_force

    def _event(self, event: str, kw: dict[str, Any]) -> None:
        self.log.info(event, **kw)

    def _open_trajectory(self, cfg: Config) -> TrajectoryRecorder | None:
        if not cfg.trajectory_log:
            return None
        try:
            return TrajectoryRecorder(cfg.trajectory_log, cfg.trajectory_log_max_mb)
        except OSError as e:
            self.log.error("trajectory_log_unavailable", path=cfg.trajectory_log,
                           error=e.strerror or str(e))
            return None

    def close(self) -> None:
        if self.traj is not None:
            self.traj.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

