"""lbd's configuration: a TOML file validated by pydantic, then CLI overrides.

Every key has a built-in default, so ``lbd`` with no ``--config`` runs.  A bad
file or value raises ConfigError with ONE line naming the file, the field and
the problem; ``lbd`` exits 78 (EX_CONFIG) on it at start, and keeps the old
configuration on a reload.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

EX_CONFIG = 78

HEURISTIC_NAMES = ("static", "ecmp", "wcmp", "sed", "lsq")


class ConfigError(Exception):
    """A one-line, user-facing description of a configuration problem."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = Field("marllb", description="shared-memory region (VIP) name")
    tick_ms: float = Field(250.0, gt=0, le=60_000, description="tick interval")
    policy: str = Field("sed", description="policy name (see lbd --list-policies)")
    checkpoint: str | None = Field(None, description="learned policy checkpoint path")
    fallback_policy: str = Field("sed", description="heuristic used when the policy fails")
    w_min: float = Field(0.1, gt=0, description="smallest weight of an up server, relative "
                         "to its static weight after normalisation (see sanitize.py)")
    w_max: float = Field(10.0, gt=0, description="largest weight relative to static; "
                         "w_max / w_min bounds the ratio between two servers")
    ttl_ms: float = Field(0.0, ge=0, description="weights' TTL on the data-plane clock; 0: 4 ticks")
    decay_per_s: float = Field(0.9, gt=0, le=1, description="sample-age decay per second")
    stale_after_ms: float = Field(
        5000.0, gt=0, description="no new msg_out frame for this long: data plane stale"
    )
    attach_backoff_max_ms: float = Field(1000.0, gt=0, le=60_000)
    socket: str = Field("/run/marllb/lbd.sock", description="control socket path; '' disables")
    socket_mode: int = Field(0o660, ge=0, le=0o777)
    socket_group: str | None = Field(None, description="group owning the control socket")
    metrics: str = Field("127.0.0.1:9464", description="Prometheus HOST:PORT; '' disables")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        bare = v.lstrip("/")
        if not bare or "/" in bare or len(bare) > 60:
            raise ValueError(f"invalid region name {v!r}: one path component, 1..60 characters")
        return v

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        from marllb.daemon.policies import discover

        known = discover()
        if v not in known:
            raise ValueError(f"unknown policy {v!r}; known: {', '.join(sorted(known))}")
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
    def ttl_ns(self) -> int:
        return int(round((self.ttl_ms or 4 * self.tick_ms) * 1e6))

    @property
    def metrics_addr(self) -> tuple[str, int] | None:
        if not self.metrics:
            return None
        host, _, port = self.metrics.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


# CLI flag dest -> config key
CLI_KEYS = ("region", "socket", "tick_ms", "policy", "checkpoint", "metrics", "log_level")


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
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except PermissionError:
            raise ConfigError(f"{source}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: invalid TOML: {e}") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
            if path is None:
                source = "command line"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None
