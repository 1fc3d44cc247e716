"""Heuristic policies: the baselines, and the daemon's fallback when a learned
policy cannot be used.  Each is a pure function of the frame."""

from __future__ import annotations

from typing import Any

import numpy as np

from marllb.daemon._core import lib
from marllb.daemon.policies.base import Policy, register_policy


class _StaticWeights(Policy):
    def act(self, features: Any) -> np.ndarray:
        return np.array(features.static_weight, dtype=np.float64)


class _EqualWeights(Policy):
    def act(self, features: Any) -> np.ndarray:
        return np.ones(features.n, dtype=np.float64)


@register_policy("static")
class StaticPolicy(_StaticWeights):
    """The configured static weights, in the data plane's SED-form selection."""

    mode = lib.MLB_MODE_SED


@register_policy("sed")
class SedPolicy(_StaticWeights):
    """Shortest expected delay: argmin (active+1)/w with static (capacity) weights."""

    mode = lib.MLB_MODE_SED


@register_policy("wcmp")
class WcmpPolicy(_StaticWeights):
    """Weighted random choice by static weights (WCMP)."""

    mode = lib.MLB_MODE_WRANDOM


@register_policy("ecmp")
class EcmpPolicy(_EqualWeights):
    """Consistent hashing over the servers, equal weights (the ECMP stand-in)."""

    mode = lib.MLB_MODE_HASH


@register_policy("lsq")
class LsqPolicy(_EqualWeights):
    """Least active flows (local view), equal weights."""

    mode = lib.MLB_MODE_LEAST_ACTIVE


@register_policy("p2c")
class P2cPolicy(_StaticWeights):
    """Power of two choices (the data plane's MLB_MODE_P2C): two servers drawn
    by static weight, the one with the smaller (active + 1) / w wins."""

    mode = lib.MLB_MODE_P2C
