"""lbctl: talk to a running lbd over its control socket.

commands:
  status [--json] [--watch [SEC]]   the daemon, then per VIP a server table like
                                    VPP's `show lb vips verbose`; --watch redraws
  weights [--json]                  the weights last decided
  reload                            re-read the config file and checkpoint (SIGHUP)
  policy set NAME[=CHECKPOINT]      switch the running policy until the next reload
  hold on|off                       freeze / unfreeze the weights
  ping                              is the daemon answering?

The socket: --socket, else $LBD_SOCKET, else lbd's default for this user
(/run/marllb/lbd.sock as root; $XDG_RUNTIME_DIR/marllb/lbd.sock or
/tmp/marllb-UID/lbd.sock otherwise; /run/marllb/lbd.sock when only that exists).

exit codes (the project's one table is in README.md):
  0   ok
  1   the daemon refused or failed the request (the reason is printed)
  2   usage error
  3   lbd is not running (no socket, nobody listening, or it stopped mid-answer)
  4   lbd is busy: it did not answer in time; retry
  5   permission denied on the control socket (join its group, or sudo)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from marllb.daemon.config import SYSTEM_SOCKET, default_socket
from marllb.daemon.control import ControlError, request

EX_OK, EX_FAILED, EX_USAGE, EX_NOT_RUNNING, EX_BUSY, EX_NOPERM = 0, 1, 2, 3, 4, 5
HEURISTICS = ("static", "ecmp", "wcmp", "sed", "lsq")
SRC_NAMES = {0: "static", 1: "daemon"}


class LbctlError(Exception):
    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.code = code


def client_socket() -> str:
    """lbd's default socket for this user; the system one when only that exists."""
    mine = default_socket()
    if not os.environ.get("LBD_SOCKET") and not os.path.exists(mine) \
            and os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return mine


def _probe(path: str) -> tuple[str, int]:
    """Why a request failed, judged by what the socket does now."""
    try:
        os.stat(path)
    except PermissionError:
        return (f"permission denied on {path}: join the socket's group or use sudo",
                EX_NOPERM)
    except OSError:
        return (f"lbd is not running (no control socket at {path}; another one with "
                f"--socket PATH or LBD_SOCKET)", EX_NOT_RUNNING)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
    except PermissionError:
        return (f"permission denied on {path}: join the socket's group or use sudo",
                EX_NOPERM)
    except (ConnectionRefusedError, FileNotFoundError):
        return (f"lbd is not running (stale control socket {path}: connection refused)",
                EX_NOT_RUNNING)
    except OSError as e:
        if isinstance(e, (BlockingIOError, TimeoutError)):
            return f"lbd is busy (its socket {path} is not accepting); retry", EX_BUSY
        return f"cannot connect to {path}: {e.strerror or e}", EX_NOT_RUNNING
    finally:
        s.close()
    return f"lbd is busy (connected to {path} but got no answer); retry", EX_BUSY


def call(path: str, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request; LbctlError with an exit code on any failure (never a traceback)."""
    try:
        return request(path, req, timeout=timeout)
    except ControlError as e:
        msg, code = _probe(path)
        if code == EX_BUSY and "did not answer" in str(e):
            msg = f"lbd did not answer on {path} within {timeout:g}s: busy; retry"
        elif code == EX_BUSY:   # it answered the probe: the first failure was transient
            msg = f"{e}; retry"
        raise LbctlError(msg, code) from None
    except OSError as e:   # reset / broken pipe: lbd died or restarted mid-reply
        msg, code = _probe(path)
        if code == EX_BUSY:
            msg = f"lbd dropped the connection on {path} ({e.strerror or e}); retry"
        else:
            msg = f"lbd stopped while answering ({e.strerror or e}); {msg}"
        raise LbctlError(msg, code) from None


# -- status ------------------------------------------------------------------------------

def _age(s: float | None) -> str:
    return "never" if s is None else f"{s:.2f}s ago"


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def _checkpoint(st: dict[str, Any]) -> str:
    ck = st.get("checkpoint")
    if ck:
        return ck
    return "-" if st.get("policy") in HEURISTICS else "shipped (built-in)"


def weights_in_force(st: dict[str, Any]) -> bool | None:
    """Does the data plane use the daemon's weights?  None: unknown (no frame yet)."""
    if "weights_in_force" in st and st["weights_in_force"] is not None:
        return bool(st["weights_in_force"])
    dp = st.get("dp") or {}
    src = dp.get("weights_source")
    return None if src is None else src == 1


def server_names(st: dict[str, Any]) -> dict[int, str]:
    """Names/addresses: from the status if lbd sends them, else from lbd's config file."""
    names = {int(s["id"]): s["name"] for s in st.get("servers") or [] if s.get("name")}
    if names or not st.get("config"):
        return names
    try:
        import tomllib

        with open(st["config"], "rb") as fh:
            servers = tomllib.load(fh).get("servers") or {}
        return {int(k): str(v) for k, v in servers.items() if str(k).isdigit()}
    except (OSError, ValueError):
        return {}


def _head(st: dict[str, Any]) -> list[str]:
    state = st["state"]
    reason = st.get("state_reason") or st.get("reason")
    lines = [f"lbd {state}" + (f" ({reason})" if reason else "")]
    lines.append(f"  pid {st['pid']}  uptime {st['uptime_s']:.0f}s  ticks {st['ticks']}  "
                 f"overruns {st['overruns']}  hold {'ON' if st['hold'] else 'off'}")
    pol = f"  policy {st['policy']}"
    if st.get("active_policy") and st["active_policy"] != st["policy"]:
        pol += f" (deciding: {st['active_policy']})"
    lines.append(pol + f"  mode {st.get('mode') or '-'}  checkpoint {_checkpoint(st)}")
    if st.get("fallback_reason"):
        lines.append(f"  POLICY FALLBACK to {st['fallback_policy']}: {st['fallback_reason']}")
    wif = weights_in_force(st)
    dp = st.get("dp") or {}
    if wif is not None:
        src = SRC_NAMES.get(dp.get("weights_source"), "?") if dp else "?"
        lines.append("  weights in force: " + ("yes (the data plane uses lbd's weights)" if wif
                     else f"NO (the data plane uses its {src} weights)"))
    tick = (f"  tick {st['tick_ms']:g} ms (target {st['target_hz']:g}/s, achieved "
            f"{st['achieved_hz']:g}/s)  jitter p50 {st['jitter']['p50_us']:.0f}us "
            f"p99 {st['jitter']['p99_us']:.0f}us")
    if st.get("ttl_ms"):   # the TTL lbd publishes, in data-plane time (ttl.py)
        tick += f"  ttl {st['ttl_ms']:g} ms data-plane"
        if st.get("dp_clock_rate"):
            tick += f" (dp clock x{st['dp_clock_rate']:.3g})"
    lines.append(tick)
    lines.append("  stages p50/p99 us: " + "  ".join(
        f"{k} {v['p50_us']:.0f}/{v['p99_us']:.0f}" for k, v in st["stages"].items()))
    frame = st.get("frame_no")
    lines.append(f"  region {st['region']}  dp_gen {st.get('dp_gen') or '-'}  frame "
                 f"{frame if frame is not None else '-'} ({_age(st.get('last_frame_age_s'))})"
                 f"  last publish {_age(st.get('last_publish_age_s'))}  reattaches "
                 f"{st['reattaches']}")
    lines.append(f"  policy fallbacks (lbd's policy -> {st['fallback_policy']}): "
                 f"{_times(st['fallback_events'])}, {st['fallback_ticks']} ticks")
    if dp:
        lines.append(f"  data plane: msg_in accepted {dp['msg_in_accepted']}, rejected stale "
                     f"{dp['msg_in_rej_stale']} gen {dp['msg_in_rej_gen']} invalid "
                     f"{dp['msg_in_rej_invalid']}; fell back to static weights "
                     f"{_times(dp['fallbacks'])}")
    lr = st.get("last_reload")
    if lr:
        what = "ok" if lr["ok"] else f"FAILED ({lr['error']}; kept the old one)"
        lines.append(f"  last reload ({lr['source']}, {lr['age_s']:.0f}s ago): {what}")
    return lines


def _vip_table(st: dict[str, Any]) -> list[str]:
    servers = st.get("servers") or []
    if not servers:
        return []
    names = server_names(st)
    width = max([len("server")] + [len(f"{s['id']} {names.get(s['id'], '')}".rstrip())
                                   for s in servers])
    lines = ["", f"vip {st['region']}  mode {st.get('mode') or '-'}  #servers {len(servers)}",
             f"  {'server':<{width}} {'admin':<6} {'published':>9} {'in force':>9} "
             f"{'static':>7} {'active':>7} {'new/s':>8} {'fct mean ms':>11} "
             f"{'fct p90 ms':>10} {'samples':>7}"]
    for s in servers:
        label = f"{s['id']} {names.get(s['id'], '')}".rstrip()
        lines.append(
            f"  {label:<{width}} {s['state']:<6} {s['weight']:>9.4g} "
            f"{s.get('weight_in_force', float('nan')):>9.4g} {s['static_weight']:>7.3g} "
            f"{s['active_flows']:>7} {s['new_flows_per_s']:>8.1f} {s['fct_mean_ms']:>11.1f} "
            f"{s['fct_p90_ms']:>10.1f} {s['fct_count']:>7}")
    return lines


def format_status(st: dict[str, Any]) -> str:
    return "\n".join(_head(st) + _vip_table(st))


def watch(fetch: Callable[[], dict[str, Any]], every: float, count: int | None = None,
          out: Any = sys.stdout) -> int:
    """Redraw the status every ``every`` s (like HAProxy's stats page); Ctrl-C ends it.

    A daemon that goes away is shown as such and watched for until it is back."""
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    n = 0
    prev: dict[str, Any] | None = None
    try:
        while count is None or n < count:
            try:
                st = fetch()
                body = format_status(st) + _deltas(prev, st)
                prev = st
            except LbctlError as e:
                body, prev = f"lbctl: {e}", None
            stamp = time.strftime("%H:%M:%S")
            out.write(f"{clear}lbctl status --watch {every:g}s  {stamp}  (Ctrl-C to quit)\n"
                      f"{body}\n")
            out.flush()
            n += 1
            if count is None or n < count:
                time.sleep(every)
    except KeyboardInterrupt:
        pass
    return EX_OK


def _deltas(prev: dict[str, Any] | None, st: dict[str, Any]) -> str:
    """Counters since the previous redraw (HAProxy shows rates, not only totals)."""
    if prev is None or prev.get("pid") != st.get("pid"):
        return ""
    parts = [f"{k} +{st[k] - prev[k]}" for k in ("ticks", "publishes", "overruns",
                                                   "fallback_events") if k in st and k in prev]
    dp, pdp = st.get("dp") or {}, prev.get("dp") or {}
    for k, label in (("msg_in_accepted", "msg_in accepted"),
                     ("fallbacks", "data-plane fallbacks")):
        if k in dp and k in pdp:
            parts.append(f"{label} +{dp[k] - pdp[k]}")
    return "\n\n  since the last redraw: " + ", ".join(parts) if parts else ""


# -- CLI ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from marllb.daemon.rollout import DEFAULT_STORE, add_canary_parser

    sock = client_socket()
    ap = argparse.ArgumentParser(
        prog="lbctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", default=sock, metavar="PATH",
                    help=f"lbd control socket (default here: {sock})")
    ap.add_argument("--timeout", type=float, default=10.0, metavar="SEC",
                    help="seconds to wait for an answer (default 10)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("status", help="the daemon's state and a per-server table",
                       description="State, policy, timings, whether the data plane uses lbd's "
                       "weights, then per VIP one line per server: id and name/address "
                       "(from lbd's config [servers]), admin state, weight published, weight "
                       "in force, static weight, active flows, new flows/s, recent FCT.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SEC",
                   help="redraw every SEC seconds (default 2) until Ctrl-C")
    p = sub.add_parser("weights", help="the weights last decided",
                       description="The weights lbd decided last, per server id.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("reload", help="re-read the config file and checkpoint (like SIGHUP)",
                   description="Re-read the config file and the checkpoint; a bad new one "
                   "is refused and the old one keeps running.")
    p = sub.add_parser("policy", help="switch the running policy",
                       description="Switch the running policy until the next reload.")
    psub = p.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    ps = psub.add_parser("set", help="switch to policy NAME[=CHECKPOINT]",
                         description="Switch to policy NAME (a learned one may name its "
                         "checkpoint: NAME=CHECKPOINT or --checkpoint) until the next reload.")
    ps.add_argument("name", metavar="NAME[=CHECKPOINT]|NAME@VERSION")
    ps.add_argument("--checkpoint", help="checkpoint for a learned policy")
    pl = psub.add_parser("list", help="the versions in the checkpoint store",
                         description="Every NAME@VERSION in the checkpoint store, with its "
                         "parent, whether it passed the evaluation gate and how it was trained "
                         "(reads the store directly; lbd need not run).")
    pl.add_argument("--store", default=DEFAULT_STORE, help=f"store (default {DEFAULT_STORE})")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    add_canary_parser(sub)
    p = sub.add_parser("hold", help="freeze (on) or unfreeze (off) the weights",
                       description="on: keep republishing the current weights (they do not "
                       "expire); off: decide again.")
    p.add_argument("on_off", choices=["on", "off"])
    sub.add_parser("ping", help="is the daemon answering?",
                   description="Exit 0 if lbd answers, 3 if it is not running, 4 if busy.")
    return ap


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.cmd == "policy":
        name, _, ckpt = args.name.partition("=")
        ckpt = ckpt or args.checkpoint
        req: dict[str, Any] = {"cmd": "policy", "name": name}
        if ckpt:   # the daemon may run elsewhere: send an absolute path
            req["checkpoint"] = os.path.abspath(os.path.expanduser(ckpt))
        return req
    if args.cmd == "hold":
        return {"cmd": "hold", "on": args.on_off == "on"}
    return {"cmd": args.cmd}


def _ok(reply: dict[str, Any], cmd: str) -> dict[str, Any]:
    if reply.get("ok"):
        return reply.get("result", {})
    err = reply.get("error", "failed")
    code = EX_BUSY if reply.get("busy") or str(err).startswith("busy") else EX_FAILED
    raise LbctlError(f"{cmd}: {err}" + ("; retry" if code == EX_BUSY else ""), code)


def _print(args: argparse.Namespace, res: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(res, indent=2))
    elif args.cmd == "status":
        print(format_status(res))
    elif args.cmd == "weights":
        print(f"policy {res.get('policy')}  mode {res.get('mode')}  hold "
              f"{'ON' if res.get('hold') else 'off'}")
        for w in res.get("weights", []):
            print(f"  {w['id']:>4} {w['weight']:.6g}")
    elif args.cmd == "reload":
        notes = "; ".join(res.get("notes") or [])
        print("reloaded" + (f" ({notes})" if notes else ""))
    elif args.cmd == "policy":
        print(f"policy set to {res.get('policy')}")
    elif args.cmd == "hold":
        print(f"hold {'on' if res.get('hold') else 'off'}")
    else:
        print("lbd is answering" + (f" (pid {res.get('pid')})" if res.get("pid") else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "canary":   # files only: the plan, the board, the store
        return args.func(args)
    if args.cmd == "policy" and args.policy_cmd == "list":
        from marllb.daemon.rollout import cmd_policy_list

        return cmd_policy_list(args)
    req = _request(args)

    def fetch() -> dict[str, Any]:
        return _ok(call(args.socket, req, args.timeout), args.cmd)

    try:
        if args.cmd == "status" and args.watch is not None:
            if args.watch <= 0:
                print("lbctl: --watch SEC must be > 0", file=sys.stderr)
                return EX_USAGE
            return watch(fetch, args.watch)
        _print(args, fetch())
    except LbctlError as e:
        print(f"lbctl: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:   # `lbctl status | head`
        return EX_OK
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
