"""Scenario generator: seeded draws of clusters, traffic and misconfiguration.

``draw(family, seed)`` returns an ordinary ``Scenario`` (sim/scenario.py), so
everything that runs a scenario (``Cluster``, ``lbsim eval``, the training
env) runs a generated one.  The same (family, seed) always gives the same
scenario; the scenario's own ``seed`` (traces) is derived from it.

What is drawn (each family fixes some axes, see ``FAMILIES``):

* cluster shape: 2-64 servers in 1-4 machine types; cores 1-16 per server,
  per-core speed 0.5-4x; worker cap max(16, 4 x cores), backlog 2 x that.
  Total capacity is capped at ``MAX_CAPACITY`` unit cores (cores halved on the
  biggest type until it fits) so that an episode stays cheap;
* static-weight error: ``right`` (= cores x speed), ``equal`` (all 1),
  ``random`` (right x a log-uniform factor in [1/3, 3] per machine type) or
  ``stale`` (right for the capacity at the start; some servers then lose
  capacity for good at an onset time, and the static weight is not updated);
* interference: count of servers hit, depth (capacity factor), period, duty
  cycle and onset;
* LBs: 1-6 with a skewed edge split (Dirichlet shares, concentration drawn);
* load 0.5-0.98 of the effective capacity (capacity events counted at their
  average, so a loss does not make the cluster infeasible); arrivals Poisson / bursty (MMPP) /
  diurnal; sizes exponential / lognormal / Pareto;
* episode size: arrivals for ``duration_s`` = clip(FLOW_BUDGET / rate,
  MIN_DURATION_S, MAX_DURATION_S) after a ``WARMUP_S`` warm-up (not scored).

Held-out set.  ``HELDOUT_FAMILIES`` are drawn from a parameter region that
training never sees (``TRAIN_RANGES`` vs ``HELDOUT_RANGES``: every held-out
draw is outside the training region on at least one axis -- more servers,
more LBs, bigger or faster machines, heavier tails, diurnal arrivals, higher
load, deeper interference), and with seeds in ``HELDOUT_SEEDS``, disjoint
from ``TRAIN_SEEDS``.  A trainer calls ``training_scenario(rng)`` (or
``draw(name, seed)`` with a training family and a training seed) and can
never get a held-out scenario: ``draw`` refuses a held-out seed for a
training family and vice versa.  Each family is tagged ``static_right``
(static weights right, no capacity change: the learned policy must be within
2% of the best heuristic) or not (wrong weights or capacity change: it must be
>= 5% better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from marllb.sim.scenario import Edge, Interference, Scenario, ServerGroup, Traffic

MAX_CAPACITY = 160.0     # unit cores in a generated cluster (episode cost)
FLOW_BUDGET = 5000       # expected scored flows per episode
MIN_DURATION_S = 15.0
MAX_DURATION_S = 60.0
WARMUP_S = 5.0
PERMANENT_S = 1e7        # an interference period standing for "for good"

TRAIN_SEEDS = range(0, 1_000_000_000)
HELDOUT_SEEDS = range(2_000_000_000, 2_100_000_000)
HELDOUT_BASE = HELDOUT_SEEDS.start


class ScenGenError(ValueError):
    """Unknown family or a seed outside the family's seed range."""


@dataclass(frozen=True)
class Ranges:
    """The parameter region one split draws from (inclusive bounds)."""

    servers: tuple[int, int]
    cores: tuple[int, ...]            # choices
    speed: tuple[float, float]        # per-core speed, log-uniform
    n_lbs: tuple[int, int]
    load: tuple[float, float]
    arrivals: tuple[str, ...]
    sizes: tuple[str, ...]
    pareto_alpha: tuple[float, float]
    lognormal_sigma: tuple[float, float]
    burst_ratio: tuple[float, float]
    interference_factor: tuple[float, float]
    split_concentration: tuple[float, float]   # Dirichlet alpha, log-uniform


TRAIN_RANGES = Ranges(
    servers=(2, 32), cores=(1, 2, 4, 8), speed=(0.5, 2.5), n_lbs=(1, 4),
    load=(0.5, 0.92), arrivals=("poisson", "bursty"),
    sizes=("exponential", "lognormal", "pareto"), pareto_alpha=(2.0, 3.0),
    lognormal_sigma=(0.5, 1.5), burst_ratio=(2.0, 4.0),
    interference_factor=(0.3, 0.6), split_concentration=(0.5, 4.0),
)
HELDOUT_RANGES = Ranges(
    servers=(33, 64), cores=(12, 16), speed=(2.5, 4.0), n_lbs=(5, 6),
    load=(0.93, 0.98), arrivals=("diurnal",),
    sizes=("pareto",), pareto_alpha=(1.5, 1.9),
    lognormal_sigma=(1.6, 2.0), burst_ratio=(5.0, 8.0),
    interference_factor=(0.1, 0.25), split_concentration=(0.2, 0.4),
)
# which held-out axes a held-out family takes out of training's region
# (the others come from the training ranges, so each relative differs from
# its training family in a controlled way)
_HELDOUT_AXES: dict[str, tuple[str, ...]] = {
    "right-hetero": ("servers", "sizes"),
    "equal-wrong": ("cores", "speed", "load"),
    "random-wrong": ("servers", "arrivals"),
    "stale-capacity": ("n_lbs", "load"),
    "interference": ("interference_factor", "sizes"),
    "skewed-lbs": ("n_lbs", "split_concentration", "arrivals"),
}


@dataclass(frozen=True)
class Family:
    name: str
    static_right: bool       # True: static weights right and no capacity change
    description: str
    weights: str = "right"   # right | equal | random | stale
    interference: bool = False
    skewed: bool = False
    heldout: bool = False
    axes: tuple[str, ...] = field(default_factory=tuple)   # held-out axes

    @property
    def tag(self) -> str:
        return "static weights right" if self.static_right else "wrong/capacity change"


_BASE = (
    Family("right-hetero", True, "heterogeneous machines, static weights = capacity"),
    Family("equal-wrong", False, "heterogeneous machines, every static weight 1",
           weights="equal"),
    Family("random-wrong", False, "static weights off by a random factor in [1/3, 3]",
           weights="random"),
    Family("stale-capacity", False, "static weights right at the start, then some "
           "servers lose 40-70% of their capacity for good", weights="stale"),
    Family("interference", False, "static weights right, periodic background load "
           "takes capacity from some servers", interference=True),
    Family("skewed-lbs", True, "static weights right, several LBs with a skewed "
           "edge split", skewed=True),
)
TRAINING_FAMILIES: tuple[str, ...] = tuple(f.name for f in _BASE)
FAMILIES: dict[str, Family] = {f.name: f for f in _BASE}
for _f in _BASE:
    FAMILIES[f"heldout-{_f.name}"] = Family(
        f"heldout-{_f.name}", _f.static_right, f"{_f.description}; held out: "
        f"{', '.join(_HELDOUT_AXES[_f.name])} outside the training range",
        weights=_f.weights, interference=_f.interference, skewed=_f.skewed,
        heldout=True, axes=_HELDOUT_AXES[_f.name])
HELDOUT_FAMILIES: tuple[str, ...] = tuple(f"heldout-{n}" for n in TRAINING_FAMILIES)


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ScenGenError(f"unknown scenario family {name!r}; known: "
                           f"{', '.join(FAMILIES)}") from None


class _Draw:
    """Draws one axis from the held-out range if the family holds it out."""

    def __init__(self, fam: Family, rng: np.random.Generator) -> None:
        self.fam, self.rng = fam, rng

    def rng_of(self, axis: str) -> tuple:
        src = HELDOUT_RANGES if axis in self.fam.axes else TRAIN_RANGES
        return getattr(src, axis)

    def uniform(self, axis: str) -> float:
        lo, hi = self.rng_of(axis)
        return float(self.rng.uniform(lo, hi))

    def loguniform(self, axis: str) -> float:
        lo, hi = self.rng_of(axis)
        return float(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))

    def integer(self, axis: str) -> int:
        lo, hi = self.rng_of(axis)
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, axis: str) -> object:
        opts = self.rng_of(axis)
        return opts[int(self.rng.integers(len(opts)))]


def _machine_types(d: _Draw, n: int) -> list[dict]:
    """1-4 machine types and how many servers of each (at least one each)."""
    k = int(d.rng.integers(1, min(4, n) + 1))
    counts = np.ones(k, dtype=int) + d.rng.multinomial(n - k, np.ones(k) / k)
    types = [{"count": int(c), "cores": int(d.choice("cores")),
              "speed": round(d.loguniform("speed"), 3)} for c in counts]
    if k > 1 and len({(t["cores"], t["speed"]) for t in types}) == 1:
        types[0]["cores"] = max(1, types[0]["cores"] // 2) if types[0]["cores"] > 1 \
            else types[0]["cores"] * 2
    while sum(t["count"] * t["cores"] * t["speed"] for t in types) > MAX_CAPACITY:
        big = max(types, key=lambda t: t["cores"] * t["speed"])
        if big["cores"] > 1:
            big["cores"] //= 2
        else:
            big["speed"] = round(big["speed"] / 2, 3)
    return types


def _groups(fam: Family, d: _Draw, types: list[dict]) -> list[ServerGroup]:
    """ServerGroups with the family's static-weight error and capacity events."""
    rng = d.rng
    n = sum(t["count"] for t in types)
    # which servers a capacity event hits: 1..max(1, n/3), spread over types
    hit = set()
    if fam.interference or fam.weights == "stale":
        k = int(rng.integers(1, max(1, n // 3) + 1))
        hit = set(rng.choice(n, size=k, replace=False).tolist())
    groups: list[ServerGroup] = []
    idx = 0
    for t in types:
        cap = t["cores"] * t["speed"]
        factor = {"right": 1.0, "stale": 1.0, "equal": 1.0 / cap,
                  "random": math.exp(rng.uniform(-math.log(3), math.log(3)))}[fam.weights]
        sw = round(cap * factor, 4)
        workers = max(16, 4 * t["cores"])
        base = {"cores": t["cores"], "speed": t["speed"], "static_weight": sw,
                "workers": workers, "backlog": 2 * workers}
        plain = 0
        for _ in range(t["count"]):
            if idx in hit:
                groups.append(ServerGroup(count=1, interference=_event(fam, d), **base))
            else:
                plain += 1
            idx += 1
        if plain:
            groups.append(ServerGroup(count=plain, **base))
    return groups


def _event(fam: Family, d: _Draw) -> Interference:
    rng = d.rng
    if fam.weights == "stale":   # capacity lost for good at the onset
        onset = float(rng.uniform(WARMUP_S, WARMUP_S + 10.0))
        factor = float(rng.uniform(0.3, 0.6))
        return Interference(start_s=round(onset, 2), period_s=PERMANENT_S,
                            on_s=PERMANENT_S, factor=round(factor, 3))
    period = float(rng.uniform(10.0, 40.0))
    duty = float(rng.uniform(0.3, 0.7))
    return Interference(start_s=round(float(rng.uniform(0.0, period)), 2),
                        period_s=round(period, 2), on_s=round(period * duty, 2),
                        factor=round(d.uniform("interference_factor"), 3))


def _edge(fam: Family, d: _Draw) -> Edge:
    n_lbs = d.integer("n_lbs") if fam.skewed or "n_lbs" in fam.axes \
        else int(d.rng.integers(1, 3))
    if n_lbs == 1:
        return Edge(n_lbs=1)
    if fam.skewed:
        conc = d.loguniform("split_concentration")
        split = d.rng.dirichlet(np.full(n_lbs, conc))
        split = np.maximum(split, 0.02)
        return Edge(n_lbs=n_lbs, split=[round(float(x / split.sum()), 4) for x in split])
    return Edge(n_lbs=n_lbs)


def effective_capacity(groups: list[ServerGroup]) -> float:
    """Unit cores on average once capacity events are counted (a permanent
    loss at its factor, a periodic one at its duty-cycle average)."""
    tot = 0.0
    for g in groups:
        cap = g.count * g.cores * g.speed
        it = g.interference
        if it is not None:
            duty = 1.0 if it.period_s >= PERMANENT_S else it.on_s / it.period_s
            cap *= 1.0 - duty * (1.0 - it.factor)
        tot += cap
    return tot


def _traffic(d: _Draw, capacity: float, effective: float) -> Traffic:
    """Traffic at the drawn load of the EFFECTIVE capacity (so that a capacity
    loss does not make the cluster infeasible: the load axis means the same
    in every family); ``target_load`` is stored against nominal capacity."""
    arrivals = str(d.choice("arrivals"))
    sizes = str(d.choice("sizes"))
    load = d.uniform("load")
    kw: dict = {"arrivals": arrivals, "sizes": sizes,
                "target_load": round(load * effective / capacity, 4)}
    if sizes == "pareto":
        kw["alpha"] = round(d.uniform("pareto_alpha"), 3)
    elif sizes == "lognormal":
        kw["sigma"] = round(d.uniform("lognormal_sigma"), 3)
    if arrivals == "bursty":
        kw["burst_ratio"] = round(d.uniform("burst_ratio"), 3)
    elif arrivals == "diurnal":
        kw["amplitude"] = round(float(d.rng.uniform(0.3, 0.6)), 3)
        kw["period_s"] = round(float(d.rng.uniform(15.0, 40.0)), 2)
    rate = kw["target_load"] * capacity / 0.2          # jobs/s at the default job size
    kw["duration_s"] = round(min(max(FLOW_BUDGET / rate, MIN_DURATION_S),
                                 MAX_DURATION_S) + WARMUP_S, 2)
    return Traffic(**kw)


def _check_seed(fam: Family, seed: int) -> None:
    rng = HELDOUT_SEEDS if fam.heldout else TRAIN_SEEDS
    if int(seed) not in rng:
        what = "held-out" if fam.heldout else "training"
        raise ScenGenError(f"family {fam.name!r} is {what}: seed {seed} is outside its "
                           f"seed range [{rng.start}, {rng.stop})")


def draw(name: str, seed: int) -> Scenario:
    """The scenario of family ``name`` for ``seed`` (same inputs, same scenario)."""
    fam = family(name)
    _check_seed(fam, seed)
    rng = np.random.default_rng([int(seed), 0x5CE9, sum(map(ord, fam.name))])
    d = _Draw(fam, rng)
    n = d.integer("servers")
    types = _machine_types(d, n)
    groups = _groups(fam, d, types)
    edge = _edge(fam, d)
    capacity = sum(g.count * g.cores * g.speed for g in groups)
    traffic = _traffic(d, capacity, effective_capacity(groups))
    return Scenario(
        name=f"gen:{fam.name}:{seed}", seed=int(rng.integers(2**31)),
        description=f"{fam.description} [{fam.tag}]", warmup_s=WARMUP_S,
        edge=edge, traffic=traffic, servers=groups)


def heldout_seed(k: int) -> int:
    """The k-th held-out seed (evaluation run k of a held-out family)."""
    return HELDOUT_BASE + int(k)


def heldout_scenarios(name: str, seeds: int = 5) -> list[Scenario]:
    """The first ``seeds`` scenarios of a held-out family (the project's report)."""
    if not family(name).heldout:
        raise ScenGenError(f"{name!r} is not a held-out family; one of "
                           f"{', '.join(HELDOUT_FAMILIES)}")
    return [draw(name, heldout_seed(k)) for k in range(seeds)]


def training_scenario(rng: np.random.Generator | int,
                      families: tuple[str, ...] = TRAINING_FAMILIES) -> Scenario:
    """A training scenario: a training family and a training seed drawn from
    ``rng``.  Never returns a held-out scenario."""
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    for name in families:
        if family(name).heldout:
            raise ScenGenError(f"training_scenario: {name!r} is a held-out family")
    name = families[int(g.integers(len(families)))]
    return draw(name, int(g.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)))


def eval_scenarios(name: str, seeds: int = 5, first: int = 0) -> list[Scenario]:
    """Scenarios to evaluate family ``name`` on: held-out seeds for a held-out
    family; for a training family, seeds from the top of the training range
    (``TRAIN_SEEDS.stop - 1 - k``), which a trainer drawing uniformly is
    unlikely to meet but may -- use held-out families for claims."""
    fam = family(name)
    if fam.heldout:
        return [draw(name, heldout_seed(first + k)) for k in range(seeds)]
    return [draw(name, TRAIN_SEEDS.stop - 1 - first - k) for k in range(seeds)]


def in_training_region(sc: Scenario) -> bool:
    """True when every drawn axis of ``sc`` lies in TRAIN_RANGES (tests use it
    to check that held-out draws are outside and training draws inside)."""
    r = TRAIN_RANGES
    tr = sc.traffic
    checks = [
        r.servers[0] <= sc.n_servers <= r.servers[1],
        all(g.cores in r.cores for g in sc.servers),
        all(r.speed[0] - 1e-9 <= g.speed <= r.speed[1] + 1e-9 for g in sc.servers),
        r.n_lbs[0] <= sc.edge.n_lbs <= r.n_lbs[1],
        r.load[0] - 1e-9 <= tr.target_load * sc.capacity_cores
        / effective_capacity(sc.servers) <= r.load[1] + 1e-6,
        tr.arrivals in r.arrivals,
        tr.sizes in r.sizes,
        tr.sizes != "pareto" or tr.alpha >= r.pareto_alpha[0] - 1e-9,
        tr.sizes != "lognormal" or tr.sigma <= r.lognormal_sigma[1] + 1e-9,
        all(g.interference is None or g.interference.period_s >= PERMANENT_S
            or g.interference.factor >= r.interference_factor[0] - 1e-9
            for g in sc.servers),
    ]
    return all(checks)
