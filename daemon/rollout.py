"""lbd's side of safe rollout: policy specs with versions, the canary slot, the trajectory log.

A policy spec is ``NAME``, ``NAME=CHECKPOINT`` or ``NAME@VERSION`` (a
version in the checkpoint store, sha256-verified before it is served).  With
``canary_plan`` configured, lbd serves whatever the plan and its guard say
(daemon/canary.py); otherwise the configured policy.  With
``trajectory_log`` configured, every tick's observation and published weights
are appended to a bounded on-disk log (daemon/trajlog.py).

``lbctl canary start|status|stop`` and ``lbctl policy list`` work on the
files directly (the plan file, the board directory, the store): no daemon
round trip, so they work the same for a fleet of LBs sharing those paths.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marllb.daemon.canary import (
    CanaryGuard,
    CanaryPlan,
    CanarySlot,
    DirBoard,
    PlanError,
    load_plan,
    write_plan,
)
from marllb.daemon.versions import CheckpointStore, VersionError

DEFAULT_STORE = "/var/lib/marllb/checkpoints"


def split_spec(spec: str, store: str | None) -> tuple[str, str | None]:
    """(registry name, checkpoint path or None) for ``NAME[=CKPT]`` or ``NAME@VERSION``.

    Raises VersionError for a version that is missing or fails verification."""
    name, sep, ck = spec.partition("=")
    if sep:
        return name.strip(), ck.strip() or None
    if "@" in spec:
        path = CheckpointStore(store or DEFAULT_STORE).resolve(spec)
        return spec.partition("@")[0], str(path)
    return spec.strip(), None


def slot_factory(store: str | None, fallback: str) -> Callable[[str], Any]:
    """``spec -> PolicySlot``; a version that cannot be resolved becomes a slot
    that falls back, with the reason (the guard then rolls a canary back)."""
    from marllb.daemon.tick import PolicySlot

    def make(spec: str) -> Any:
        try:
            name, ck = split_spec(spec, store)
        except VersionError as e:
            slot = PolicySlot(fallback, None, fallback)
            slot.name = spec
            slot.load_error = str(e)
            slot.fallback_reason = f"policy {spec!r} failed to load: {e}"
            slot.policy = None
            return slot
        return PolicySlot(name, ck, fallback)

    return make


def policy_slot(spec: str, checkpoint: str | None, fallback: str, store: str | None,
                strict: bool) -> Any:
    """The slot for ``spec`` (NAME, NAME=CKPT or NAME@VERSION); ``strict`` raises PolicyError
    instead of falling back (reload, ``lbctl policy set``)."""
    from marllb.daemon.policies import PolicyError
    from marllb.daemon.tick import PolicySlot

    if "@" in spec and "=" not in spec:
        if strict:
            try:
                name, ck = split_spec(spec, store)
            except VersionError as e:
                raise PolicyError(str(e)) from None
            return PolicySlot.build_strict(name, ck, fallback)
        return slot_factory(store, fallback)(spec)
    name, _, ck = spec.partition("=")
    ck = ck or checkpoint
    return PolicySlot.build_strict(name, ck, fallback) if strict else \
        PolicySlot(name, ck, fallback)


def build_slot(cfg: Any, strict: bool = False,
               log: Callable[[str, dict[str, Any]], None] | None = None) -> Any:
    """What lbd serves for ``cfg``: the canary slot when a plan is configured, else the
    configured policy.  An unusable plan is a PolicyError when ``strict`` (reload keeps
    the old config), else logged and ignored (start-up serves the configured policy)."""
    from marllb.daemon.policies import PolicyError

    if cfg.canary_plan:
        try:
            return canary_slot(cfg.canary_plan, cfg.lb_id, cfg.canary_board,
                               cfg.checkpoint_store, cfg.fallback_policy, log)
        except PlanError as e:
            if strict:
                raise PolicyError(str(e)) from None
            if log is not None:
                log("canary_plan_unusable", {"error": str(e), "serving": cfg.policy})
    return policy_slot(cfg.policy, cfg.checkpoint, cfg.fallback_policy, cfg.checkpoint_store,
                       strict)


def canary_slot(plan_path: str, lb_id: str, board_dir: str, store: str | None,
                fallback: str, log: Callable[[str, dict[str, Any]], None] | None = None
                ) -> CanarySlot:
    """The slot lbd serves under a canary plan (PlanError if the plan is unusable)."""
    plan = load_plan(plan_path)
    guard = CanaryGuard(plan, lb_id, DirBoard(board_dir))
    return CanarySlot(guard, slot_factory(store, fallback), log)


# -- lbctl canary / lbctl policy list -------------------------------------------------------

def cmd_canary(args: argparse.Namespace) -> int:
    """``lbctl canary start|status|stop``: 0 ok, 1 refused, 78 bad plan/version."""
    plan_path = Path(args.plan)
    if args.canary_cmd == "start":
        try:
            store = CheckpointStore(args.store)
            if "@" in args.candidate:
                store.require_gate(args.candidate)
                store.resolve(args.candidate)
            plan = CanaryPlan.from_dict({
                "candidate": args.candidate, "incumbent": args.incumbent,
                "lbs": [x for x in args.lbs.split(",") if x], "threshold": args.threshold,
                "started_unix": int(time.time())}, where="lbctl canary start")
            write_plan(plan_path, plan)
        except (VersionError, PlanError, OSError) as e:
            print(f"lbctl canary start: {e}")
            return 78 if not isinstance(e, OSError) else 1
        print(f"canary plan written to {plan_path}: {plan.candidate} on "
              f"{', '.join(plan.lbs)}, incumbent {plan.incumbent}; lbd reads it on "
              "`lbctl reload` (SIGHUP)")
        return 0
    if args.canary_cmd == "stop":
        try:
            plan_path.unlink()
        except FileNotFoundError:
            print(f"no canary plan at {plan_path}")
            return 1
        except OSError as e:
            print(f"lbctl canary stop: {plan_path}: {e.strerror or e}")
            return 1
        print(f"removed {plan_path}; lbd serves its configured policy after `lbctl reload`")
        return 0
    return _canary_status(plan_path, Path(args.board), args.json)


def _canary_status(plan_path: Path, board_dir: Path, as_json: bool) -> int:
    try:
        plan = load_plan(plan_path)
    except PlanError as e:
        print(f"lbctl canary status: {e}")
        return 1
    board = DirBoard(board_dir)
    rows = [board.read(lb) or {"lb": lb} for lb in board.lbs()]
    if as_json:
        print(json.dumps({"plan": plan.to_dict(), "lbs": rows}, indent=2))
        return 0
    print(f"canary {plan.candidate} vs incumbent {plan.incumbent} on {', '.join(plan.lbs)} "
          f"(rollback if worse by > {plan.threshold:.0%}, alpha {plan.alpha})")
    print(f"{'LB':10s} {'role':10s} {'serving':24s} {'verdict':13s} {'last FCT ms':>11s}  reason")
    for r in rows:
        w = r.get("windows") or []
        last = f"{w[-1][1] * 1e3:11.1f}" if w and math.isfinite(w[-1][1]) else f"{'-':>11s}"
        print(f"{r.get('lb', '?'):10s} {r.get('role', '?'):10s} {r.get('serving', '?'):24s} "
              f"{r.get('verdict', '?'):13s} {last}  {r.get('reason', '')}")
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    rows = CheckpointStore(args.store).listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no policy versions in {args.store}")
        return 0
    print(f"{'version':24s} {'parent':24s} {'gate':5s} command")
    for r in rows:
        if "error" in r:
            print(f"{r['policy']:24s} ERROR {r['error']}")
            continue
        print(f"{r['policy']:24s} {str(r.get('parent') or '-'):24s} "
              f"{'pass' if r['gate'] else 'no':5s} {r.get('command') or '-'}")
    return 0


def add_canary_parser(sub: argparse._SubParsersAction) -> None:
    """``lbctl canary ...`` (registered by lbctl)."""
    pc = sub.add_parser("canary", help="canary a policy version on some LBs (plan file)",
                        description="Write, show or remove the canary plan that every lbd "
                        "of the fleet reads; the guard in each canary lbd rolls back or "
                        "promotes automatically.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pc.add_argument("--plan", default="/etc/marllb/canary.json", help="plan file path")
    pc.add_argument("--store", default=DEFAULT_STORE, help="checkpoint store")
    pc.add_argument("--board", default="/var/lib/marllb/board", help="outcome board dir")
    cs = pc.add_subparsers(dest="canary_cmd", required=True, metavar="start|status|stop")
    st = cs.add_parser("start", help="write a plan: CANDIDATE on --lbs, the rest incumbent",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    st.add_argument("candidate", help="NAME@vN (must have passed the evaluation gate) or NAME")
    st.add_argument("--lbs", required=True, help="comma-separated lb ids to run the candidate")
    st.add_argument("--incumbent", required=True, help="what the other LBs keep serving")
    st.add_argument("--threshold", type=float, default=CanaryPlan.threshold,
                    help="roll back when worse by more than this fraction")
    ss = cs.add_parser("status", help="the plan and each LB's verdict from the board")
    ss.add_argument("--json", action="store_true")
    cs.add_parser("stop", help="remove the plan (lbd goes back to its configured policy)")
    pc.set_defaults(func=cmd_canary, json=False)


class TrajectoryRecorder:
    """Appends each published tick to the bounded trajectory log (opt-in).

    Never raises into the tick loop: an I/O error (disk full, permissions) is
    counted and reported in ``status()``; the log stops, the daemon does not."""

    def __init__(self, path: str, max_mb: float = 256.0) -> None:
        from marllb.daemon.trajlog import TrajectoryLog

        max_bytes = max(int(max_mb * (1 << 20)), 1 << 20)
        self.log = TrajectoryLog(path, max_bytes=max_bytes,
                                 segment_bytes=min(16 << 20, max_bytes // 4))

    def record(self, rec: Any) -> None:
        from marllb.daemon.features import observation_matrix
        from marllb.daemon.trajlog import TrajRecord

        if rec is None or not rec.published:
            return
        f = rec.features
        self.log.append(TrajRecord(int(f.t_ns), rec.policy_name, observation_matrix(f),
                                   rec.weights))

    def status(self) -> dict[str, Any]:
        return {"path": str(self.log.dir), "records": self.log.records,
                "errors": self.log.errors, "last_error": self.log.last_error}

    def close(self) -> None:
        self.log.close()
