"""lbd: the marllb control-plane daemon.

Every tick it reads the data plane's statistics from the shared-memory region,
turns them into per-server features, runs a policy, sanitises the weights and
publishes them back.  See ``lbd --help``; operators talk to it with ``lbctl``.

Exit codes: 0 clean stop (SIGTERM/SIGINT), 78 bad configuration, 1 could not
start (e.g. the control socket is in use).
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

from marllb.daemon.config import CLI_KEYS, EX_CONFIG, ConfigError, load_config  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="lbd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    ap.add_argument("--region", metavar="NAME", help="shared-memory region (VIP) to attach")
    ap.add_argument("--socket", metavar="PATH", help="control socket path ('' disables)")
    ap.add_argument("--tick-ms", dest="tick_ms", type=float, metavar="N",
                    help="tick interval in milliseconds (default 250)")
    ap.add_argument("--policy", metavar="NAME", help="policy name (see --list-policies)")
    ap.add_argument("--checkpoint", metavar="PATH", help="learned policy checkpoint")
    ap.add_argument("--metrics", metavar="ADDR",
                    help="Prometheus HOST:PORT ('' disables; port 0 picks one)")
    ap.add_argument("--log-level", dest="log_level",
                    choices=["debug", "info", "warning", "error"])
    ap.add_argument("--check-config", action="store_true",
                    help="validate the configuration, print it as JSON and exit")
    ap.add_argument("--list-policies", action="store_true", help="list policies and exit")
    return ap.parse_args(argv)


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
            control = ControlServer(cfg.socket, daemon, cfg.socket_mode, cfg.socket_group)
        except (OSError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) else (e.strerror or str(e))
            print(f"lbd: control socket {cfg.socket}: {msg}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
