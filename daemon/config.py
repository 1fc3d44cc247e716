"""lbd's configuration: a TOML file validated by pydantic, then CLI overrides.

Every key has a built-in default, so ``lbd`` with no ``--config`` runs.  A bad
file or value raises ConfigError with ONE line naming the file, the field and
the problem; ``lbd`` exits 78 (EX_CONFIG) on it at start, and keeps the old
configuration on a reload.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from socket import gethostname
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from marllb.daemon.ttl import TtlSpec

EX_CONFIG = 78

# Bounds (the why of each): the data plane caps any msg_in TTL at 10 s
# (its compiled-in maximum) so a killed daemon's weights never stay in force longer;
# lbd never asks for more.  A tick under 1 ms is busy-looping, not control;
# over 5 s the 4-tick default TTL would pass that cap.  Weights are ratios:
# [1e-6, 1e6] keeps every product and quotient finite in the data plane's SED
# scores ((active + 1) / w).
MAX_TTL_MS = 10_000.0
MIN_TICK_MS = 1.0
MAX_TICK_MS = 5_000.0
MAX_WEIGHT = 1e6
MIN_WEIGHT = 1e-6
# a config is a few hundred bytes: refuse to read a device or a huge file
MAX_CONFIG_BYTES = 1 << 20
MAX_STALE_MS = 3_600_000.0
# sockaddr_un.sun_path holds 108 bytes, NUL included
MAX_SOCKET_PATH = 107

# fallbacks need no checkpoint and cannot fail to load (the adaptive ones keep state only)
HEURISTIC_NAMES = ("static", "ecmp", "wcmp", "sed", "lsq", "p2c", "wrr_latency", "prequal")
SYSTEM_SOCKET = "/run/marllb/lbd.sock"


def default_socket() -> str:
    """The control socket when none is configured, as systemd and XDG expect.

    ``$LBD_SOCKET`` if set; root: /run/marllb/lbd.sock; otherwise under
    ``$RUNTIME_DIRECTORY`` (systemd's RuntimeDirectory=), ``$XDG_RUNTIME_DIR``
    or /tmp/marllb-UID, so a non-root ``lbd`` starts without extra flags."""
    env = os.environ.get("LBD_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return SYSTEM_SOCKET
    if os.environ.get("RUNTIME_DIRECTORY"):   # systemd: the unit's own dir(s), ':'-separated
        return os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "lbd.sock")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "marllb", "lbd.sock")
    return f"/tmp/marllb-{os.geteuid()}/lbd.sock"


class ConfigError(Exception):
    """A one-line, user-facing description of a configuration problem."""


class Config(BaseModel):
    # allow_inf_nan=False: inf/nan are rejected for every float, naming the field
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    region: str = Field("marllb", description="shared-memory region (VIP) name")
    tick_ms: float = Field(250.0, ge=MIN_TICK_MS, le=MAX_TICK_MS, description="tick interval")
    policy: str = Field("sed", description="policy name (see lbd --list-policies)")
    checkpoint: str | None = Field(None, description="learned policy checkpoint path")
    fallback_policy: str = Field("sed", description="heuristic used when the policy fails")
    w_min: float = Field(0.1, ge=MIN_WEIGHT, le=MAX_WEIGHT,
                         description="smallest weight of an up server, relative to its static "
                         "weight after normalisation (see sanitize.py)")
    w_max: float = Field(10.0, gt=0, le=MAX_WEIGHT, description="largest weight relative to "
                         "static; w_max / w_min bounds the ratio between two servers")
    ttl_ms: float = Field(0.0, ge=0, le=MAX_TTL_MS,
                          description="weights' TTL in data-plane milliseconds; 0: derived "
                          "from the tick and the observed data-plane clock (ttl.py), <= 10 s")
    decay_per_s: float = Field(0.9, gt=0, le=1, description="sample-age decay per second")
    stale_after_ms: float = Field(
        5000.0, gt=0, le=MAX_STALE_MS,
        description="no new msg_out frame for this long: data plane stale"
    )
    attach_backoff_max_ms: float = Field(1000.0, gt=0, le=60_000)
    socket: str = Field(default_factory=default_socket,
                        description="control socket path; '' disables (default: see "
                        "default_socket)")
    socket_mode: int = Field(0o660, ge=0, le=0o777)
    socket_group: str | None = Field(None, description="group owning the control socket")
    metrics: str = Field("127.0.0.1:9464", description="Prometheus HOST:PORT; '' disables")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    checkpoint_store: str = Field("/var/lib/marllb/checkpoints",
                                  description="versioned checkpoints (policy = NAME@VERSION)")
    lb_id: str = Field(default_factory=gethostname, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                       description="this LB's id in a canary plan (default: the host name)")
    canary_plan: str = Field("", description="canary plan file (lbctl canary start); '' off")
    canary_board: str = Field("/var/lib/marllb/board",
                              description="directory of per-LB canary outcomes (shared)")
    trajectory_log: str = Field("", description="bounded on-disk log of (observation, "
                                "weights) per tick for fine-tuning; '' off")
    trajectory_log_max_mb: float = Field(256.0, ge=1.0, le=1e6,
                                         description="the log's size bound")
    servers: dict[str, str] = Field(
        default_factory=dict, description="server id -> name or address, for lbctl and metrics")

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not k.isdigit():
                raise ValueError(f"keys are server ids (0, 1, ...), got {k!r}")
        return v

    @field_validator("tick_ms", "w_min", "w_max", "ttl_ms", "decay_per_s", "stale_after_ms",
                     "attach_backoff_max_ms", "socket_mode", mode="before")
    @classmethod
    def _not_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):   # TOML `true` is not a number of milliseconds
            raise ValueError("must be a number, not true/false")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        from marllb.daemon.shm import name_problem

        why = name_problem(v)
        if why is not None:
            raise ValueError(f"invalid region name: {why}")
        return v

    @field_validator("socket")
    @classmethod
    def _socket(cls, v: str) -> str:
        if "\0" in v:
            raise ValueError("contains a NUL byte")
        if len(v.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
            raise ValueError(f"longer than {MAX_SOCKET_PATH} bytes (a Unix socket path limit)")
        return v

    @field_validator("checkpoint", "socket_group")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and ("\0" in v or not v):
            raise ValueError("must be a non-empty string without NUL bytes")
        return v

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        from marllb.daemon.policies import discover

        known = discover()
        name = v
        if "@" in v:   # NAME@VERSION from the checkpoint store (resolved and verified on load)
            from marllb.daemon.versions import VersionError, parse_ref

            try:
                v = str(parse_ref(v))
            except VersionError as e:
                raise ValueError(str(e)) from None
            name = v.partition("@")[0]
        if name not in known:
            raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(known))}")
        return v

    @field_validator("fallback_policy")
    @classmethod
    def _fallback(cls, v: str) -> str:
        if v not in HEURISTIC_NAMES:
            raise ValueError(f"must be a heuristic ({', '.join(HEURISTIC_NAMES)}), got {v!r}")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str) -> str:
        if v in ("", "off"):
            return ""
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT (or '' to disable), got {v!r}")
        return v

    @field_validator("w_max")
    @classmethod
    def _bounds(cls, v: float, info: ValidationInfo) -> float:
        w_min = info.data.get("w_min")
        if w_min is not None and v < w_min:
            raise ValueError(f"must be >= w_min ({w_min})")
        return v

    @property
    def tick_ns(self) -> int:
        return int(round(self.tick_ms * 1e6))

    @property
    def ttl_ns(self) -> TtlSpec:
        if self.ttl_ms:
            return TtlSpec(round(min(self.ttl_ms, MAX_TTL_MS) * 1e6))
        return TtlSpec(min(4 * self.tick_ns, round(MAX_TTL_MS * 1e6)), tick_ns=self.tick_ns)

    @property
    def server_names(self) -> dict[int, str]:
        return {int(k): name for k, name in self.servers.items()}

    @property
    def metrics_addr(self) -> tuple[str, int] | None:
        if not self.metrics:
            return None
        host, _, port = self.metrics.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


# CLI flag dest -> config key
CLI_KEYS = ("region", "socket", "tick_ms", "ttl_ms", "policy", "checkpoint", "metrics",
            "log_level")


def _one_line(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(file)"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    got = err.get("input")
    shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) \
        else f" (got {got!r})"
    return f"{source}: {loc}: {msg}{shown}{extra}"


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (None: built-in defaults), apply non-None overrides, validate."""
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        source = f"config {path}"
        try:
            # O_NONBLOCK: a FIFO at the path must not hang the daemon in open()
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ConfigError(f"{source}: not a regular file")
                raw = fh.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES >> 10} KiB")
            data = tomllib.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except PermissionError:
            raise ConfigError(f"{source}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: invalid TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                              f"offset {e.start}); TOML files are UTF-8") from None
        except OSError as e:
            raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
        except ValueError as e:   # e.g. a NUL in the path
            raise ConfigError(f"{source}: cannot read: {e}") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
            if path is None:
                source = "command line"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None
    except (TypeError, ValueError) as e:   # never a traceback for a user's file
        raise ConfigError(f"{source}: {e}") from None
