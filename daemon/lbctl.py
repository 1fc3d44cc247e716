"""lbctl: talk to a running lbd over its control socket.

  lbctl status [--json]        state, policy, timings and a per-server table
  lbctl weights [--json]       the weights last decided
  lbctl reload                 re-read the config file and checkpoint
  lbctl policy set NAME [--checkpoint PATH]
  lbctl hold on|off            freeze / unfreeze the weights

Exit codes: 0 ok, 1 the daemon refused or failed the request, 2 usage,
3 the daemon is not running or its socket is not accessible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from marllb.daemon.control import ControlError, request

DEFAULT_SOCKET = os.environ.get("LBD_SOCKET", "/run/marllb/lbd.sock")


def _fmt_age(s: float | None) -> str:
    return "never" if s is None else f"{s:.2f}s ago"


def format_status(st: dict[str, Any]) -> str:
    lines = []
    state = st["state"]
    head = f"lbd {state}"
    if st.get("reason"):
        head += f" ({st['reason']})"
    lines.append(head)
    lines.append(f"  uptime {st['uptime_s']:.0f}s  pid {st['pid']}  ticks {st['ticks']}  "
                 f"overruns {st['overruns']}  hold {'ON' if st['hold'] else 'off'}")
    pol = f"  policy {st['policy']}"
    if st.get("active_policy") and st["active_policy"] != st["policy"]:
        pol += f" (deciding: {st['active_policy']})"
    pol += f"  mode {st.get('mode') or '-'}  checkpoint {st.get('checkpoint') or '-'}"
    lines.append(pol)
    if st.get("fallback_reason"):
        lines.append(f"  FALLBACK to {st['fallback_policy']}: {st['fallback_reason']}")
    lines.append(f"  tick {st['tick_ms']:g} ms (target {st['target_hz']:g}/s, achieved "
                 f"{st['achieved_hz']:g}/s)  jitter p50 {st['jitter']['p50_us']:.0f}us "
                 f"p99 {st['jitter']['p99_us']:.0f}us")
    stages = st["stages"]
    lines.append("  stages p50/p99 us: " + "  ".join(
        f"{k} {v['p50_us']:.0f}/{v['p99_us']:.0f}" for k, v in stages.items()))
    lines.append(f"  region {st['region']}  dp_gen {st.get('dp_gen') or '-'}  frame "
                 f"{st.get('frame_no') if st.get('frame_no') is not None else '-'} "
                 f"({_fmt_age(st.get('last_frame_age_s'))})  last publish "
                 f"{_fmt_age(st.get('last_publish_age_s'))}  reattaches {st['reattaches']}")
    dp = st.get("dp")
    if dp:
        lines.append(f"  data plane: accepted {dp['msg_in_accepted']}  rejected stale "
                     f"{dp['msg_in_rej_stale']} gen {dp['msg_in_rej_gen']} invalid "
                     f"{dp['msg_in_rej_invalid']}  fallbacks {dp['fallbacks']}")
    lr = st.get("last_reload")
    if lr:
        what = "ok" if lr["ok"] else f"FAILED ({lr['error']}; kept the old one)"
        lines.append(f"  last reload ({lr['source']}, {lr['age_s']:.0f}s ago): {what}")
    servers = st.get("servers") or []
    if servers:
        lines.append("")
        hdr = (f"  {'id':>4} {'state':<6} {'static':>7} {'weight':>8} {'active':>7} "
               f"{'new/s':>9} {'fct mean ms':>12} {'fct p90 ms':>11} {'samples':>7}")
        lines.append(hdr)
        for s in servers:
            lines.append(
                f"  {s['id']:>4} {s['state']:<6} {s['static_weight']:>7.3g} {s['weight']:>8.4g} "
                f"{s['active_flows']:>7} {s['new_flows_per_s']:>9.1f} {s['fct_mean_ms']:>12.1f} "
                f"{s['fct_p90_ms']:>11.1f} {s['fct_count']:>7}"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lbctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", default=DEFAULT_SOCKET,
                    help=f"lbd control socket (default {DEFAULT_SOCKET}; env LBD_SOCKET)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("status", help="what the daemon sees and does")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("weights", help="the weights last decided")
    p.add_argument("--json", action="store_true")
    sub.add_parser("reload", help="re-read the config file and checkpoint (like SIGHUP)")
    p = sub.add_parser("policy", help="switch the running policy")
    psub = p.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    ps = psub.add_parser("set", help="switch to policy NAME (until the next reload)")
    ps.add_argument("name")
    ps.add_argument("--checkpoint", help="checkpoint for a learned policy")
    p = sub.add_parser("hold", help="freeze (on) or unfreeze (off) the weights")
    p.add_argument("on_off", choices=["on", "off"])
    sub.add_parser("ping", help="is the daemon answering?")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "policy":
        req: dict[str, Any] = {"cmd": "policy", "name": args.name}
        if args.checkpoint:
            req["checkpoint"] = args.checkpoint
    elif args.cmd == "hold":
        req = {"cmd": "hold", "on": args.on_off == "on"}
    else:
        req = {"cmd": args.cmd}
    try:
        reply = request(args.socket, req, timeout=args.timeout)
    except ControlError as e:
        print(f"lbctl: {e}", file=sys.stderr)
        return 3
    if not reply.get("ok"):
        print(f"lbctl: {args.cmd}: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    res = reply.get("result", {})
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
