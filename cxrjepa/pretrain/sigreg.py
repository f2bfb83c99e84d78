"""SIGReg: how far a batch of embeddings is from the isotropic Gaussian N(0, I) (LeJEPA's regulariser).

The statistic (Balestriero & LeCun, arXiv 2511.08544) slices the (N, D) embeddings along M random unit
directions ``a`` and tests each 1-D sample ``x = z @ a`` against N(0, 1) with the Epps-Pulley statistic

    EP = N * integral over t of |phi_N(t) - exp(-t^2 / 2)|^2 * w(t) dt,   w(t) = exp(-t^2 / 2),

where ``phi_N(t) = mean_n exp(i t x_n)`` is the empirical characteristic function (ECF) and
``exp(-t^2 / 2)`` the standard normal's. The integrand is even in ``t`` (``phi_N(-t)`` is the conjugate of
``phi_N(t)`` and the target is real), so it is integrated on ``[0, t_max]`` by the trapezoid rule and doubled.
SIGReg is the mean of EP over the directions. For Gaussian samples EP stays O(1) whatever N (its
expectation is ``integral (1 - exp(-t^2)) w(t) dt``, about 1.06); for collapsed or low-rank samples it grows
like N. Cost and memory are linear in N, D and M; every term is differentiable.

Determinism and processes: the directions of a step are drawn from a generator seeded by
``(run seed, step)`` on the embeddings' device, so every rank draws the same ones without communicating and
a resumed run draws the ones it would have. Across processes the ECF (its cosine and sine means) is averaged
with one all-reduce, never the samples, so the statistic with W ranks equals the one of one rank on the
concatenated batch. The all-reduce is straight-through: its value is the global mean and its gradient is
that of the local mean; every rank computes the same statistic, so after DDP/FSDP average the gradients
over ranks each sample's gradient is exactly the one-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cxrjepa.core.errors import ConfigError

#: random stream of the SIGReg directions (beside cxrjepa.pretrain.data's sample / mask / order streams)
DIRECTION_STREAM = 7


@dataclass
class SIGRegConfig:
    """The SIGReg statistic (``lejepa``, ``jepa-sigreg``) and an optional extra term for ``ijepa`` / ``salt``."""

    #: random unit directions per step (the paper uses 256-1024; more = a less noisy statistic)
    slices: int = 1024
    #: trapezoid knots on [0, t_max] (odd; 17 as in the paper)
    knots: int = 17
    t_max: float = 3.0
    #: ijepa / salt only: weight of an extra SIGReg term on the context encoder's mean-pooled tokens, added to
    #: the prediction loss (0 = off; lejepa and jepa-sigreg set their own weight in their sections)
    weight: float = 0.0

    def validate(self) -> None:
        if self.slices < 1:
            raise ConfigError("'sigreg.slices' must be at least 1.")
        if self.knots < 3 or self.knots % 2 == 0:
            raise ConfigError("'sigreg.knots' must be an odd number of at least 3.")
        if self.t_max <= 0:
            raise ConfigError("'sigreg.t_max' must be positive.")
        if self.weight < 0:
            raise ConfigError("'sigreg.weight' must not be negative.")


def quadrature(knots: int, t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots ``t`` on [0, t_max] and weights such that ``sum(f(t) * weights)`` approximates
    ``integral over the real line of f(t) exp(-t^2 / 2) dt`` for an even ``f`` (trapezoid rule, doubled)."""
    t = torch.linspace(0.0, t_max, knots, dtype=torch.float64)
    dt = t_max / (knots - 1)
    trapezoid = torch.full((knots,), dt, dtype=torch.float64)
    trapezoid[[0, -1]] = dt / 2
    return t.float(), (2.0 * trapezoid * torch.exp(-0.5 * t**2)).float()


def direction_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, DIRECTION_STREAM, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def directions(dim: int, slices: int, seed: int, step: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``slices`` random unit directions in R^dim as columns (dim, slices), a function of (seed, step) only."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(direction_seed(seed, step))
    a = torch.randn(dim, slices, generator=gen, device=device, dtype=torch.float32)
    return a / a.norm(dim=0, keepdim=True)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_mean(local: torch.Tensor) -> torch.Tensor:
    """The mean of ``local`` over all processes, straight-through: the value is the global mean, the gradient
    is the identity (every rank's loss is the same function of the global mean, see the module docstring)."""
    world = world_size()
    if world == 1:
        return local
    total = local.detach().clone()
    dist.all_reduce(total)
    return local + (total / world - local.detach())


def epps_pulley(x: torch.Tensor, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Epps-Pulley statistics of 1-D samples along dim -2: ``x`` (..., N, M) -> (..., M), in float32.

    The ECF is averaged over all processes (:func:`global_mean`); N counts every process's samples."""
    xt = x.float().unsqueeze(-1) * t  # (..., N, M, K)
    ecf = torch.stack([xt.cos().mean(dim=-3), xt.sin().mean(dim=-3)])  # (2, ..., M, K)
    ecf = global_mean(ecf)
    err = (ecf[0] - torch.exp(-0.5 * t**2)).square() + ecf[1].square()
    return (err @ weights) * (x.shape[-2] * world_size())


class SIGReg(nn.Module):
    """``sigreg(z, step)``: the mean sliced Epps-Pulley statistic of embeddings ``z`` (N, D), or of each group
    of ``z`` (G, N, D) -- e.g. one per view -- averaged over groups. Directions are the same for every group."""

    def __init__(self, config: SIGRegConfig, seed: int):
        super().__init__()
        self.slices = int(config.slices)
        self.seed = int(seed)
        t, w = quadrature(config.knots, config.t_max)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("weights", w, persistent=False)

    def directions(self, dim: int, step: int, device: torch.device) -> torch.Tensor:
        return directions(dim, self.slices, self.seed, step, device)

    def per_slice(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """The statistic per group and direction: (..., M)."""
        with torch.autocast(device_type=z.device.type, enabled=False):  # fp32 projections: cos(t x) is phase-sensitive
            z = z.float()
            a = self.directions(z.shape[-1], int(step), z.device)
            return epps_pulley(z @ a, self.t.to(z.device), self.weights.to(z.device))

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        return self.per_slice(z, step).mean()
