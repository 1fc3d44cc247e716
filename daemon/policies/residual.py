"""Learned policy v2: a residual set network on top of an adaptive baseline.

``ResidualPolicy`` runs the baseline named in its checkpoint (``wrr_latency``)
on the frame, then the set network (``marllb.daemon.setnet``, numpy) over the
LB's servers, and serves ``base_weight x exp(u)`` per server in the
baseline's selection mode.  With the network's output at zero (untrained) the
weights ARE the baseline's.

The learned names ``qmix``, ``sac_gru`` and ``matd3`` are served here: each
loads its checkpoint (default: the one shipped in ``daemon/checkpoints/``) and
builds a ``ResidualPolicy`` when it is a set-network checkpoint
(``meta.arch == setnet.ARCH``), or the v1 GRU agent (``learned.py``) for an
older checkpoint, so old checkpoints keep working under their names.  A
checkpoint is served under its ``algorithm``'s name, or under any name its
``served_as`` list adds: ``qmix`` is the default learned policy operators
configure, and the shipped ``qmix`` checkpoint is whichever learner won
(``describe()["algorithm"]`` says which).

Ratio bound: sanitize reads weights as multipliers of the static weights and
bounds the ratio between two up servers' multipliers by ``w_max / w_min``
(100 with lbd's defaults).  The policy keeps its own multipliers within
``ratio_max`` (checkpoint metadata, default that same 100), so with the
default bounds sanitize never has to clip it; when its own bound bites,
``ratio_clipped_ticks`` counts it and ``describe()`` (``lbctl status``) shows
it, and sanitize's own ``clipped`` count shows any clip a tighter daemon
config makes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from marllb.daemon import checkpoint as ckpt
from marllb.daemon import setnet
from marllb.daemon.policies.base import Policy, PolicyError, make_policy, register_policy

KINDS = ("continuous", "discrete")
ALGORITHMS = ("qmix", "sac_gru", "matd3")
DEFAULT_RATIO_MAX = 100.0


def is_setnet(path: str | Path) -> bool:
    """True when the checkpoint at ``path`` is a residual set-network one."""
    _, mp = ckpt.paths(path)
    try:
        meta = json.loads(mp.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("arch") == setnet.ARCH


def validate(tensors: dict[str, np.ndarray], meta: dict[str, Any], where: str,
             algorithm: str | None = None) -> None:
    """CheckpointError (one line: file, field, values) unless the daemon can serve it."""

    def bad(field: str, got: Any, want: Any) -> ckpt.CheckpointError:
        return ckpt.CheckpointError(f"checkpoint {where}: {field} is {got!r}, expected {want!r}")

    if meta.get("format") != ckpt.FORMAT:
        raise bad("format", meta.get("format"), ckpt.FORMAT)
    if meta.get("arch") != setnet.ARCH:
        raise bad("arch", meta.get("arch"), setnet.ARCH)
    algo = meta.get("algorithm")
    served = meta.get("served_as") or []
    if algo not in ALGORITHMS or (algorithm is not None and algo != algorithm
                                  and algorithm not in served):
        raise bad("algorithm", algo, algorithm or " or ".join(ALGORITHMS))
    if meta.get("kind") not in KINDS:
        raise bad("kind", meta.get("kind"), " or ".join(KINDS))
    inp = meta.get("inputs") or {}
    if inp.get("names") != list(setnet.INPUT_NAMES) or inp.get("spec") != setnet.FEATURE_SPEC:
        raise ckpt.CheckpointError(
            f"checkpoint {where}: inputs {inp.get('spec')!r} do not match this daemon's "
            f"{setnet.FEATURE_SPEC!r} (retrain with this version)")
    if not isinstance(meta.get("base"), str):
        raise bad("base", meta.get("base"), "a policy name")
    r = meta.get("ratio_max", DEFAULT_RATIO_MAX)
    if not (isinstance(r, (int, float)) and r >= 1.0):
        raise bad("ratio_max", r, "a number >= 1")
    try:
        net = setnet.NumpySetNet(tensors)
    except ValueError as e:
        raise ckpt.CheckpointError(f"checkpoint {where}: {e}") from None
    if net.in_dim != setnet.N_INPUTS:
        raise bad("input_dim", net.in_dim, setnet.N_INPUTS)
    want_out = 1 if meta["kind"] == "continuous" else len(setnet.LOG_LEVELS)
    if net.n_out != want_out:
        raise bad("outputs", net.n_out, want_out)


class ResidualPolicy(Policy):
    """base_weight x exp(u); u from the set network (see the module docstring)."""

    learned = True

    def __init__(self, checkpoint: str | None = None, *, algorithm: str = "matd3",
                 tensors: dict[str, np.ndarray] | None = None,
                 meta: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """From a checkpoint path, or (training) from ``tensors`` + ``meta``."""
        if kwargs:
            raise PolicyError(
                f"policy {self.name!r} takes no option(s) {', '.join(sorted(kwargs))}")
        path = str(checkpoint) if checkpoint else str(ckpt.shipped(algorithm))
        super().__init__(checkpoint=None if tensors is not None else path)
        try:
            if tensors is None or meta is None:
                tensors, meta = ckpt.load(path)
            validate(tensors, meta, path if self.checkpoint else "<in memory>", algorithm)
        except ckpt.CheckpointError as e:
            raise PolicyError(str(e)) from None
        self.algorithm = meta["algorithm"]
        self.meta = meta
        self.kind = meta["kind"]
        self.ratio_max = float(meta.get("ratio_max", DEFAULT_RATIO_MAX))
        self.net = setnet.NumpySetNet(tensors)
        self.base = make_policy(meta["base"], **meta.get("base_options", {}))
        self.mode = self.base.mode
        self.clipped_ticks = 0
        self.last_u = np.zeros(0)
        self.reset(0)

    def reset(self, n_servers: int) -> None:
        super().reset(n_servers)
        self.base.reset(n_servers)
        self.prev_u = np.zeros(int(n_servers))
        self._gen: int | None = None
        self._ids: np.ndarray | None = None

    def _track(self, f: Any) -> None:
        """Forget per-server state when the data plane or its server table changed."""
        if f.n != self.n_servers or (self._gen is not None and f.dp_gen != self._gen) or \
                (self._ids is not None and not np.array_equal(self._ids, f.server_id)):
            self.reset(f.n)
        self._gen = f.dp_gen
        self._ids = np.array(f.server_id)

    def decide(self, x: np.ndarray, up: np.ndarray) -> np.ndarray:
        """(n, D) inputs -> (n,) log-multipliers; training overrides it to explore."""
        return setnet.log_multiplier(self.net.forward(x, up), self.kind)

    def act(self, features: Any) -> np.ndarray:
        f = features
        self._track(f)
        base = np.asarray(self.base.act(f), dtype=np.float64).reshape(-1)
        if f.n == 0:
            return base
        x = setnet.server_inputs(f, base, self.prev_u)
        u = np.asarray(self.decide(x, f.up), dtype=np.float64)
        bad = ~np.isfinite(u)
        u = np.where(bad, 0.0, u)
        self.prev_u = u
        self.last_u = u
        w = base * np.exp(u)
        w = self._bound_ratio(w, f)
        # non-finite network output propagates (NaN) so the daemon falls back loudly
        w[bad] = np.nan
        return w

    def _bound_ratio(self, w: np.ndarray, f: Any) -> np.ndarray:
        """Keep the largest / smallest multiplier (weight / static, as sanitize
        reads it) over up servers <= ratio_max; counted when it bites."""
        up = np.asarray(f.up, dtype=bool)
        s = np.asarray(f.static_weight, dtype=np.float64)
        ok = up & (w > 0) & (s > 0) & np.isfinite(w)
        if np.count_nonzero(ok) < 2:
            return w
        r = w[ok] / s[ok]
        lo = float(r.max()) / self.ratio_max
        if float(r.min()) < lo * (1 - 1e-12):
            self.clipped_ticks += 1
            w = w.copy()
            w[ok] = s[ok] * np.maximum(r, lo)
        return w

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(algorithm=self.algorithm, arch=setnet.ARCH, base=self.base.name,
                 kind=self.kind, ratio_max=self.ratio_max, ratio_clipped_ticks=self.clipped_ticks,
                 scenario=self.meta.get("scenario"), trained_servers="1..256")
        return d


class _Served(Policy):
    """Registry entry for a learned name: a set-network checkpoint -> ResidualPolicy,
    an older GRU checkpoint -> the v1 agent of ``learned.py``."""

    algorithm: ClassVar[str] = ""

    def __new__(cls, checkpoint: str | None = None, **kwargs: Any) -> Any:  # noqa: D102
        path = str(checkpoint) if checkpoint else str(ckpt.shipped(cls.algorithm))
        if is_setnet(path) or cls.algorithm not in ckpt.ALGORITHMS:
            pol: Policy = ResidualPolicy(path, algorithm=cls.algorithm, **kwargs)
        else:
            from marllb.daemon.policies import learned

            pol = learned.V1[cls.algorithm](checkpoint=path, **kwargs)
        pol.name = cls.name  # served (and published) under the name asked for
        return pol


@register_policy("qmix")
class ServedQmix(_Served):
    """QMIX-trained: residual set network (v2) or GRU agent (v1 checkpoints)."""

    algorithm = "qmix"


@register_policy("sac_gru")
class ServedSacGru(_Served):
    """SAC-trained: residual set network (v2) or GRU actor (v1 checkpoints)."""

    algorithm = "sac_gru"


@register_policy("matd3")
class ServedMatd3(_Served):
    """MATD3-trained continuous residual on the adaptive baseline."""

    algorithm = "matd3"
