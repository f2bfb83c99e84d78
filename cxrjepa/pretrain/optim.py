"""AdamW with weight decay only on weight matrices, and per-step schedule application."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cxrjepa.core.errors import ConfigError

#: parameters never decayed besides biases and norm weights (1-D tensors)
NO_DECAY_NAMES = ("pos_embed", "mask_token", "time_embed")


@dataclass
class OptimConfig:
    """AdamW, warm-up + cosine LR, rising weight decay (I-JEPA recipe; see docs/pretrain.md)."""

    lr: float = 5.0e-4
    start_lr: float = 1.0e-5
    final_lr: float = 1.0e-6
    #: fraction of the run spent warming up
    warmup_fraction: float = 0.1
    #: weight decay at the start and at the end of the run (cosine in between)
    weight_decay: tuple[float, float] = (0.04, 0.4)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    #: clip the global gradient norm to this value; 0 = no clipping
    clip_grad: float = 0.0

    def validate(self) -> None:
        if self.lr <= 0 or self.start_lr < 0 or self.final_lr < 0:
            raise ConfigError("'optim.lr' must be positive and 'optim.start_lr' / 'optim.final_lr' not negative.")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("'optim.warmup_fraction' must be in [0, 1).")
        if min(self.weight_decay) < 0:
            raise ConfigError("'optim.weight_decay' must not be negative.")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("'optim.betas' must be in [0, 1).")
        if self.clip_grad < 0:
            raise ConfigError("'optim.clip_grad' must not be negative (0 turns clipping off).")


def decays(name: str, param: torch.Tensor) -> bool:
    return param.ndim > 1 and not any(part in NO_DECAY_NAMES for part in name.split("."))


def param_groups(module: nn.Module) -> list[dict]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, config: OptimConfig, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters; ``fused`` for the single-kernel CUDA implementation."""
    kwargs = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        param_groups(module),
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        weight_decay=config.weight_decay[0],
        **kwargs,
    )


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("decay", True):
            group["weight_decay"] = wd
