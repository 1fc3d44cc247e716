"""The residual set network in torch (training side of ``marllb.daemon.setnet``).

Same layout and parameter names as the numpy ``NumpySetNet`` the daemon runs,
batched over padded sets: inputs ``(B, N, D)`` with a ``(B, N)`` mask of real
up servers.  ``SetCritic`` is the centralised critic the actor-critics use: a
set network over each server's actor input, its action and training-only
global state, pooled to one value per LB-tick.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from marllb.daemon import setnet


def masked_mean(e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(B, N, H), (B, N) -> (B, H) mean over m==1 (zeros where none)."""
    w = m.unsqueeze(-1)
    return (e * w).sum(1) / w.sum(1).clamp(min=1.0)


class SetNet(nn.Module):
    """phi -> masked mean -> rho; ``out`` zero-initialised (u = 0 untrained)."""

    def __init__(self, in_dim: int = setnet.N_INPUTS, hidden: int = 64, n_out: int = 1,
                 noop_bias: float = 0.0) -> None:
        super().__init__()
        self.phi1 = nn.Linear(in_dim, hidden)
        self.phi2 = nn.Linear(hidden, hidden)
        self.rho1 = nn.Linear(in_dim + 2 * hidden, hidden)
        self.out = nn.Linear(hidden, n_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if noop_bias and n_out > 1:
            # discrete heads: the no-op level wins ties from the start
            with torch.no_grad():
                self.out.bias[setnet.NOOP_INDEX] = noop_bias
        self.hidden = hidden

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), m (B, N) up-and-real mask -> (B, N, K)."""
        e = torch.relu(self.phi2(torch.relu(self.phi1(x))))
        c = masked_mean(e, m).unsqueeze(1).expand_as(e)
        return self.out(torch.relu(self.rho1(torch.cat([x, e, c], dim=-1))))

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def load_numpy(self, params: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()})


class SetCritic(nn.Module):
    """Q(LB-tick) = head(mean_j psi([x_j, a_j, g_j])) with per-server extras."""

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.psi = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """z (B, N, Din), m (B, N) -> (B,). Mean and max pooling (max catches one hot server)."""
        e = self.psi(z)
        mx = (e - 1e6 * (1 - m.unsqueeze(-1))).max(1).values
        return self.head(torch.cat([masked_mean(e, m), mx], -1)).squeeze(-1)
