"""lbd: the marllb control-plane daemon.

Every tick it reads the data plane's per-server statistics from the
shared-memory region, turns them into features, runs a policy, sanitises the
weights and publishes them back with a TTL.  Operators talk to it with
``lbctl``; Prometheus scrapes ``--metrics``.

Flags override the config file (``--config``); every key has a default.

exit codes:
  0   clean stop (SIGTERM/SIGINT)
  1   could not start (e.g. the control socket is in use or not creatable)
  2   usage error
  78  bad configuration (one line naming the file, field and value)
"""

from __future__ import annotations

import os

# One thread for the numeric libraries, set before anything imports numpy:
# the per-tick matmuls are tiny, and an OpenBLAS/OpenMP pool spin-waits after
# each one, burning a core that belongs to packet processing (issue 15).
# threadpool_limits in main() re-applies it should numpy already be loaded.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402

from marllb.daemon.config import (  # noqa: E402
    CLI_KEYS,
    EX_CONFIG,
    Config,
    ConfigError,
    load_config,
)


def _default(key: str) -> str:
    f = Config.model_fields[key]
    v = f.get_default(call_default_factory=True)
    if isinstance(v, float):
        return f"{v:g}"
    return "''" if v == "" else str(v)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="lbd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", metavar="FILE",
                    help="TOML config (default: none, the built-in defaults below)")
    ap.add_argument("--region", metavar="NAME",
                    help=f"shared-memory region (VIP) to attach (default {_default('region')})")
    ap.add_argument("--socket", metavar="PATH",
                    help="control socket path, '' disables (default $LBD_SOCKET, else "
                    "/run/marllb/lbd.sock as root, $RUNTIME_DIRECTORY/lbd.sock, "
                    "$XDG_RUNTIME_DIR/marllb/lbd.sock or /tmp/marllb-UID/lbd.sock; "
                    f"here: {_default('socket')})")
    ap.add_argument("--tick-ms", dest="tick_ms", type=float, metavar="MS",
                    help=f"tick interval, wall-clock milliseconds (default {_default('tick_ms')})")
    ap.add_argument("--ttl-ms", dest="ttl_ms", type=float, metavar="MS",
                    help="TTL of the published weights in DATA-PLANE milliseconds (default 0: "
                    "derived from the tick and the observed data-plane clock rate, so a "
                    "sped-up simulator keeps the weights in force)")
    ap.add_argument("--policy", metavar="NAME[=CHECKPOINT]",
                    help=f"policy (see --list-policies), optionally with its checkpoint "
                    f"(default {_default('policy')})")
    ap.add_argument("--checkpoint", metavar="PATH",
                    help="learned policy checkpoint (default: the policy's shipped one, if any)")
    ap.add_argument("--metrics", metavar="HOST:PORT",
                    help="Prometheus endpoint, '' disables, port 0 picks one "
                    f"(default {_default('metrics')})")
    ap.add_argument("--log-level", dest="log_level",
                    choices=["debug", "info", "warning", "error"],
                    help=f"(default {_default('log_level')})")
    ap.add_argument("--check-config", action="store_true",
                    help="validate the configuration and load its policy and checkpoint "
                    "(exit 78 on any problem), print it as JSON and exit")
    ap.add_argument("--list-policies", action="store_true", help="list policies and exit")
    args = ap.parse_args(argv)
    if args.policy and "=" in args.policy:   # NAME=CHECKPOINT, as lbsim eval takes it
        name, _, ckpt = args.policy.partition("=")
        if args.checkpoint and ckpt and args.checkpoint != ckpt:
            ap.error(f"--policy {args.policy} and --checkpoint {args.checkpoint} disagree")
        args.policy, args.checkpoint = name, ckpt or args.checkpoint
    if args.checkpoint:   # relative to where the user typed it, whatever lbd's cwd later
        args.checkpoint = os.path.abspath(os.path.expanduser(args.checkpoint))
    return args


def _socket_hint() -> str:
    return ("; pick another with --socket PATH or LBD_SOCKET=PATH (run as a normal user, "
            "lbd's default is under $XDG_RUNTIME_DIR or /tmp/marllb-UID)")


def check_policy(cfg: Config) -> str | None:
    """Load the configured policy and checkpoint as a start would: the problem, or None.

    At start lbd still runs on the fallback heuristic when this fails (loudly);
    ``--check-config`` fails instead, so a missing checkpoint is caught before."""
    from pathlib import Path

    from marllb.daemon.checkpoint import paths
    from marllb.daemon.policies import PolicyError
    from marllb.daemon.tick import PolicySlot

    ckpt = cfg.checkpoint
    if ckpt and not any(p.is_file() for p in (Path(ckpt), *paths(ckpt))):
        return f"checkpoint {ckpt}: no such file"
    try:
        PolicySlot.build_strict(cfg.policy, ckpt, cfg.fallback_policy)
    except PolicyError as e:
        return f"policy {cfg.policy!r}: {e}"
    return None


def pin_numeric_threads() -> None:
    """Limit BLAS/OpenMP pools to one thread, even if numpy is already loaded."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_policies:
        from marllb.daemon.policies import MODE_NAMES, discover

        for name, cls in sorted(discover().items()):
            print(f"{name:10s} mode={MODE_NAMES.get(cls.mode, cls.mode)}")
        return 0
    overrides = {k: getattr(args, k) for k in CLI_KEYS}
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"lbd: {e}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        problem = check_policy(cfg)
        if problem is not None:
            print(f"lbd: {problem}", file=sys.stderr)
            return EX_CONFIG
        try:
            print(cfg.model_dump_json(indent=2))
        except BrokenPipeError:
            pass
        return 0

    from marllb.daemon.control import ControlServer
    from marllb.daemon.logs import setup_logging
    from marllb.daemon.loop import Daemon

    pin_numeric_threads()
    setup_logging(cfg.log_level)
    daemon = Daemon(cfg, config_path=args.config, overrides=overrides)
    log = daemon.log
    daemon.install_signals()
    control = None
    if cfg.socket:
        try:
            _make_socket_dir(cfg.socket)
            control = ControlServer(cfg.socket, daemon, cfg.socket_mode, cfg.socket_group)
        except (OSError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) else (e.strerror or str(e))
            print(f"lbd: control socket {cfg.socket}: {msg}{_socket_hint()}",
                  file=sys.stderr)
            return 1
        control.start()
        daemon.socket_path = cfg.socket
    metrics_server = None
    if cfg.metrics_addr is not None:
        from marllb.daemon.metrics import start_metrics

        host, port = cfg.metrics_addr
        try:
            metrics_server, daemon.metrics_address = start_metrics(daemon, host, port)
            log.info("metrics", address=daemon.metrics_address)
        except OSError as e:
            log.error("metrics_unavailable", address=cfg.metrics, error=str(e))
    try:
        rc = daemon.run()
    finally:
        if control is not None:
            control.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        daemon.close()
    return rc


def _make_socket_dir(path: str) -> None:
    """Create the socket's directory when it is lbd's own (the per-user default)."""
    parent = os.path.dirname(os.path.abspath(path))
    in_tmp = parent.startswith("/tmp/marllb-")
    if not os.path.isdir(parent) and (in_tmp or os.path.basename(parent) == "marllb"):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    if in_tmp and os.stat(parent).st_uid != os.geteuid():   # /tmp is shared: never trust
        raise OSError(f"{parent} belongs to another user")    # someone else's directory


if __name__ == "__main__":
    sys.exit(main())
