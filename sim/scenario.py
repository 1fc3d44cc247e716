"""Scenarios: pydantic-validated TOML files describing one repeatable run.

``load_scenario(name_or_path)`` takes a shipped name (``s1``..``s4``,
``small``) or a path to a TOML file.  The schema is documented in
``sim/scenarios/README.md``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from marllb.sim.traces import DEFAULT_SPEED, MEAN_JOB_ITERATIONS

SHIPPED_DIR = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(ValueError):
    """A bad scenario file or name; one line naming the file/field/value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interference(_Strict):
    """Periodic background load: from ``start_s``, every ``period_s`` the
    server's capacity is multiplied by ``factor`` for ``on_s`` seconds."""
    start_s: float = Field(0.0, ge=0)
    period_s: float = Field(20.0, gt=0)
    on_s: float = Field(10.0, gt=0)
    factor: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _on_within_period(self) -> Interference:
        if self.on_s > self.period_s:
            raise ValueError(f"on_s ({self.on_s}) must be <= period_s ({self.period_s})")
        return self


class ServerGroup(_Strict):
    count: int = Field(1, ge=1, le=256)
    cores: float = Field(1.0, gt=0)
    speed: float = Field(1.0, gt=0, description="per-core speed multiplier")
    static_weight: float | None = Field(None, gt=0, description="default: cores x speed")
    workers: int = Field(64, ge=1, description="max jobs in service (worker cap)")
    backlog: int = Field(128, ge=0, description="waiting connections beyond the worker cap")
    interference: Interference | None = None


class Traffic(_Strict):
    arrivals: Literal["poisson", "bursty", "diurnal"] = "poisson"
    sizes: Literal["exponential", "lognormal", "pareto"] = "exponential"
    mean_size: float = Field(MEAN_JOB_ITERATIONS, gt=0, description="iterations")
    target_load: float = Field(0.9, gt=0, le=2.0, description="offered load / capacity")
    duration_s: float = Field(60.0, gt=0)
    sigma: float = Field(1.0, gt=0)
    alpha: float = Field(2.5, gt=1)
    burst_ratio: float = Field(4.0, ge=1)
    on_frac: float = Field(0.3, gt=0, lt=1)
    mean_period_s: float = Field(5.0, gt=0)
    amplitude: float = Field(0.5, ge=0, lt=1)
    period_s: float = Field(60.0, gt=0)


class Edge(_Strict):
    n_lbs: int = Field(2, ge=1, le=64)
    split: list[float] | None = Field(None, description="traffic share per LB; default even")
    workers_per_lb: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _split_ok(self) -> Edge:
        if self.split is not None:
            if len(self.split) != self.n_lbs:
                raise ValueError(f"split has {len(self.split)} entries, n_lbs is {self.n_lbs}")
            if any(x < 0 for x in self.split) or sum(self.split) <= 0:
                raise ValueError("split entries must be >= 0 and not all zero")
        return self

    def shares(self) -> list[float]:
        s = self.split or [1.0] * self.n_lbs
        tot = sum(s)
        return [x / tot for x in s]


class Scenario(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    speed: float = Field(DEFAULT_SPEED, gt=0, description="iterations/s of one unit core")
    tick_ms: float = Field(250.0, gt=0, description="policy tick and publish interval")
    ttl_ms: float = Field(1000.0, gt=0, description="msg_in TTL the sim daemon writes")
    warmup_s: float = Field(0.0, ge=0, description="flows arriving earlier are not scored")
    edge: Edge = Edge()
    traffic: Traffic = Traffic()
    servers: list[ServerGroup] = Field(min_length=1)

    def expanded_servers(self) -> list[ServerGroup]:
        out: list[ServerGroup] = []
        for g in self.servers:
            out.extend(g for _ in range(g.count))
        return out

    @model_validator(mode="after")
    def _limits(self) -> Scenario:
        n = sum(g.count for g in self.servers)
        if n > 256:
            raise ValueError(f"{n} servers; at most 256")
        return self

    @property
    def n_servers(self) -> int:
        return sum(g.count for g in self.servers)

    @property
    def capacity_cores(self) -> float:
        """Nominal capacity in unit cores (interference not counted)."""
        return sum(g.cores * g.speed * g.count for g in self.servers)

    def arrival_rate(self) -> float:
        """Arrival rate (jobs/s) that makes the offered load ``target_load``."""
        per_job_s = self.traffic.mean_size / self.speed
        return self.traffic.target_load * self.capacity_cores / per_job_s


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    cand = SHIPPED_DIR / f"{s.lower()}.toml"
    if "/" not in s and not s.endswith(".toml") and cand.is_file():
        return cand
    p = Path(s)
    if p.is_file():
        return p
    raise ScenarioError(f"scenario {s!r}: not a shipped name ({', '.join(shipped_names())}) "
                        "nor a TOML file")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped name, a TOML path, or ``gen:FAMILY[:SEED]`` (sim/scengen.py;
    without a seed: the family's first evaluation scenario)."""
    if str(name_or_path).startswith("gen:"):
        return _generated(str(name_or_path))
    p = resolve(name_or_path)
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: invalid TOML: {e}") from None
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read: {e.strerror or e}") from None
    data.setdefault("name", p.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        val = err.get("input")
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ScenarioError(f"{p}: {loc}: {err['msg']} (got {val!r}){more}") from None


def _generated(spec: str) -> Scenario:
    from marllb.sim import scengen

    _, _, rest = spec.partition(":")
    fam, _, seed = rest.partition(":")
    try:
        if not seed:
            return scengen.eval_scenarios(fam, 1)[0]
        return scengen.draw(fam, int(seed))
    except ValueError as e:   # ScenGenError, or a seed that is not an integer
        raise ScenarioError(f"scenario {spec!r}: {e}") from None
