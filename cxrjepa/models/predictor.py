"""The I-JEPA predictor: a narrow ViT that predicts target-block features from context tokens.

Context tokens (from the context encoder) are projected to the predictor width and given fixed sin-cos
positions; each target block is a run of one learned mask token placed at the block's positions. As in
the reference implementation, every target block is predicted in its own sequence (the context repeated
once per block), so blocks never see each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cxrjepa.core.errors import ConfigError
from cxrjepa.models.posembed import sincos_grid


@dataclass
class PredictorConfig:
    """Predictor architecture (width 384 as in I-JEPA; depth 12 there, 6 for small data)."""

    depth: int = 6
    width: int = 384
    #: attention heads; 0 = width / 64
    heads: int = 0
    mlp_ratio: float = 4.0
    drop_path: float = 0.0

    def validate(self) -> None:
        if self.depth < 1:
            raise ConfigError("'predictor.depth' must be at least 1.")
        if self.width < 8 or self.width % 4:
            raise ConfigError("'predictor.width' must be a multiple of 4 and at least 8.")
        if self.width % self.num_heads:
            raise ConfigError(
                f"'predictor.width' ({self.width}) must be divisible by the number of heads ({self.num_heads})."
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError("'predictor.drop_path' must be in [0, 1).")

    @property
    def num_heads(self) -> int:
        return self.heads or max(1, self.width // 64)


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (0.02) linear weights, zero biases, unit norms (the ViT/I-JEPA initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Predictor(nn.Module):
    """``forward(ctx, ctx_idx, tgt_idx, grid)``: (B, K, D) context tokens at flat positions ``ctx_idx``
    (B, K) -> predictions (B, M, T, D_out) for ``M`` target blocks of ``T`` positions ``tgt_idx`` (B, M, T).

    ``out_dim`` (default: the encoder width) is the width of what is predicted: a frozen teacher's features
    (SALT) or a patch's pixels (the pixel-reconstruction decoder)."""

    def __init__(self, config: PredictorConfig, embed_dim: int, out_dim: int | None = None):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.config = config
        width = config.width
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        dpr = torch.linspace(0, config.drop_path, config.depth).tolist()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(width, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm)
            for i in range(config.depth)
        )
        self.norm = norm(width)
        self.proj = nn.Linear(width, out_dim or embed_dim)
        self.grad_checkpointing = False
        self._pos: dict[tuple, torch.Tensor] = {}
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for i, blk in enumerate(self.blocks, start=1):  # I-JEPA's depth-scaled residual projections
            with torch.no_grad():
                blk.attn.proj.weight.div_((2.0 * i) ** 0.5)
                blk.mlp.fc2.weight.div_((2.0 * i) ** 0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def pos_embed(self, grid: Sequence[int], device: torch.device) -> torch.Tensor:
        key = (tuple(int(g) for g in grid), str(device))
        pos = self._pos.get(key)
        if pos is None:
            pos = self._pos[key] = sincos_grid(self.config.width, key[0]).to(device)
        return pos

    def forward(
        self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, grid: Sequence[int]
    ) -> torch.Tensor:
        b, k, _ = ctx.shape
        m, t = tgt_idx.shape[1], tgt_idx.shape[2]
        pos = self.pos_embed(grid, ctx.device)
        x = self.embed(ctx) + pos[ctx_idx]
        x = x.unsqueeze(1).expand(b, m, k, x.shape[-1]).reshape(b * m, k, x.shape[-1])
        q = self.mask_token + pos[tgt_idx.reshape(b * m, t)]
        x = torch.cat([x, q.to(x.dtype)], dim=1)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.proj(self.norm(x[:, k:]).reshape(b, m, t, -1))  # a new tensor, not a view (FSDP2 hooks)
