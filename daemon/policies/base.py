"""The policy interface and the registry every policy (heuristic or learned) joins.

A policy turns one tick's Features into one weight per server and declares the
data-plane selection mode (``MLB_MODE_*``) its weights are meant for; the
daemon writes that mode into msg_in next to the weights.

Adding a policy::

    from marllb.daemon.policies.base import Policy, register_policy

    @register_policy("qmix")
    class QmixPolicy(Policy):
        mode = lib.MLB_MODE_SED
        def __init__(self, checkpoint: str | None = None, **kwargs): ...
        def reset(self, n_servers: int) -> None: ...
        def act(self, features) -> np.ndarray: ...

Any module in this package is imported on the first registry lookup, so a new
file here is all it takes.  Policies that live outside the package load by
module name from the environment: ``LBD_POLICY_MODULES=mypkg.policies,other``
(e.g. ``Environment=`` in a systemd drop-in).  A policy that cannot be built raises PolicyError
(the daemon then falls back to its configured heuristic, loudly).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any, ClassVar

import numpy as np

from marllb.daemon._core import lib

# The data plane's selection modes, spelled as the VPP CLI (`lb rl mode ...`),
# lbctl, lbsim and checkpoints spell them.  MODE_IDS also takes the old
# spellings (wrandom, least_active) that checkpoints and scripts may carry.
MODE_NAMES: dict[int, str] = {
    lib.MLB_MODE_NONE: "none",
    lib.MLB_MODE_SED: "sed",
    lib.MLB_MODE_WRANDOM: "wcmp",
    lib.MLB_MODE_LEAST_ACTIVE: "lsq",
    lib.MLB_MODE_HASH: "hash",
    lib.MLB_MODE_P2C: "p2c",
}
MODE_ALIASES: dict[str, str] = {"wrandom": "wcmp", "least_active": "lsq"}
MODE_IDS: dict[str, int] = {name: mode for mode, name in MODE_NAMES.items()}
MODE_IDS.update({old: MODE_IDS[new] for old, new in MODE_ALIASES.items()})


class PolicyError(Exception):
    """A policy could not be built or loaded (unknown name, bad checkpoint, ...)."""


class Policy:
    """Base class. Subclasses set ``mode`` and implement ``act``."""

    name: ClassVar[str] = "policy"
    mode: ClassVar[int] = lib.MLB_MODE_SED
    learned: ClassVar[bool] = False

    def __init__(self, checkpoint: str | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise PolicyError(
                f"policy {self.name!r} takes no option(s) {', '.join(sorted(kwargs))}"
            )
        self.checkpoint = checkpoint  # heuristics ignore it
        self.n_servers = 0

    def reset(self, n_servers: int) -> None:
        """Start a new episode / attach: forget per-agent state (e.g. GRU hidden)."""
        self.n_servers = int(n_servers)

    def act(self, features: Any) -> np.ndarray:
        """One float64 weight per server of ``features``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": MODE_NAMES.get(self.mode, str(self.mode)),
            "checkpoint": self.checkpoint,
        }


POLICIES: dict[str, type[Policy]] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_discovered = False


def register_policy(name: str) -> Any:
    """Class decorator: register a Policy subclass under ``name``."""

    def deco(cls: type[Policy]) -> type[Policy]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"{cls!r} is not a Policy subclass")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


def discover() -> dict[str, type[Policy]]:
    """Import every module of this package once (each registers its policies).

    A module that fails to import (e.g. a learned policy whose dependency is
    missing) is remembered, not fatal: the heuristics stay available."""
    global _discovered
    if not _discovered:
        _discovered = True
        pkg = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name == "base":
                continue
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except Exception as e:  # noqa: BLE001 - reported by make_policy
                _IMPORT_ERRORS[info.name] = f"{type(e).__name__}: {e}"
        for mod in filter(None, os.environ.get("LBD_POLICY_MODULES", "").split(",")):
            try:
                importlib.import_module(mod.strip())
            except Exception as e:  # noqa: BLE001 - reported by make_policy
                _IMPORT_ERRORS[mod.strip()] = f"{type(e).__name__}: {e}"
    return POLICIES


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build the policy registered as ``name``; PolicyError with the reason if not."""
    discover()
    cls = POLICIES.get(name)
    if cls is None:
        hint = f" (module {name} failed to import: {_IMPORT_ERRORS[name]})" \
            if name in _IMPORT_ERRORS else ""
        raise PolicyError(
            f"unknown policy {name!r}{hint}; known: {', '.join(sorted(POLICIES))}"
        )
    try:
        return cls(**kwargs)
    except PolicyError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to build is a PolicyError
        raise PolicyError(f"policy {name!r} failed to load: {type(e).__name__}: {e}") from e
