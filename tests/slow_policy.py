"""A deliberately slow policy for fault injection (loaded into lbd through
LBD_POLICY_MODULES=tests.slow_policy): each act() sleeps SLOW_POLICY_MS."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from marllb.daemon.policies.base import Policy, register_policy


@register_policy("slow")
class SlowPolicy(Policy):
    def act(self, features: Any) -> np.ndarray:
        time.sleep(float(os.environ.get("SLOW_POLICY_MS", "100")) / 1e3)
        return np.asarray(features.static_weight, dtype=np.float64)
