"""The projector of joint-embedding objectives (LeJEPA): an MLP with batch norm, used in training only.

``Linear -> BatchNorm -> ReLU`` blocks then a plain ``Linear`` (the SimCLR / VICReg / LeJEPA head). The
exported encoder never includes it.

Batch norm here always normalises with the statistics of the whole global batch -- every process's samples
-- in training and evaluation alike (the projector is never used on single images, so it keeps no running
statistics). That makes a run on W processes compute what one process computes on the concatenated
batch. ``torch.nn.SyncBatchNorm`` does this on GPUs only (it refuses CPU tensors, so gloo runs could not use
it); :class:`GlobalBatchNorm` does it everywhere with one all-reduce of the sums in the forward pass and one
of their gradients in the backward pass (the exact gradient of the global-batch statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cxrjepa.core.errors import ConfigError


@dataclass
class ProjectorConfig:
    """Projector MLP: ``layers`` linear layers, the hidden ones ``hidden`` wide with batch norm and ReLU."""

    hidden: int = 2048
    #: output width (the space SIGReg shapes into an isotropic Gaussian)
    out: int = 128
    #: linear layers in all (the last one plain); 1 = a single linear map
    layers: int = 3

    def validate(self) -> None:
        if self.hidden < 1 or self.out < 1 or self.layers < 1:
            raise ConfigError("'projector.hidden', 'projector.out' and 'projector.layers' must be at least 1.")


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of every process's gradient (each rank's loss depends on
    the global sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over all processes (differentiable); ``x`` itself in a single process."""
    return _AllReduceSum.apply(x) if _world() > 1 else x


class GlobalBatchNorm(nn.BatchNorm1d):
    """Batch norm over (N, C) features with the statistics of the global batch (all processes); no running
    statistics. Computed in float32."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, eps=eps, affine=True, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        n = x.shape[0] * _world()
        sums = all_reduce_sum(torch.cat([x.sum(dim=0), x.square().sum(dim=0)]))
        mean, sq = sums.split(x.shape[1])
        mean = mean / n
        var = (sq / n - mean.square()).clamp_min(0.0)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(dtype)


class Projector(nn.Module):
    """(N, in_dim) features -> (N, out) projections."""

    def __init__(self, config: ProjectorConfig, in_dim: int):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(config.layers - 1):
            # no bias before batch norm: it would be removed by the norm (its gradient is rounding noise)
            layers += [
                nn.Linear(width, config.hidden, bias=False),
                GlobalBatchNorm(config.hidden),
                nn.ReLU(inplace=True),
            ]
            width = config.hidden
        layers.append(nn.Linear(width, config.out))
        self.net = nn.Sequential(*layers)

    @property
    def removes_shifts(self) -> bool:
        """Whether a constant added to every input vector leaves the output unchanged (a linear map, then batch
        norm): the gradient of such a shift is exactly zero."""
        return self.config.layers > 1

    @property
    def out_dim(self) -> int:
        return self.config.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def flops(self, rows: float) -> float:
        """Forward matrix FLOPs on ``rows`` feature vectors."""
        from cxrjepa.models.flops import linear_flops

        return sum(linear_flops(rows, m.in_features, m.out_features) for m in self.net if isinstance(m, nn.Linear))
