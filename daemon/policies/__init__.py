"""Policies by name: ``make_policy(name, **kwargs)``; see base.py to add one."""

from marllb.daemon.policies import heuristics as _heuristics  # noqa: F401  (registers)
from marllb.daemon.policies.base import (
    MODE_IDS,
    MODE_NAMES,
    POLICIES,
    Policy,
    PolicyError,
    discover,
    make_policy,
    register_policy,
)

HEURISTICS = ("static", "ecmp", "wcmp", "sed", "lsq")

__all__ = [
    "HEURISTICS",
    "MODE_IDS",
    "MODE_NAMES",
    "POLICIES",
    "Policy",
    "PolicyError",
    "discover",
    "make_policy",
    "register_policy",
]
