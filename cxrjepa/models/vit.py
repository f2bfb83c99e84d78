"""Vision Transformer encoders (timm) for 1-channel medical images.

An encoder is a plain timm ``VisionTransformer`` built without a CLS token, with average pooling over
the final-normed patch tokens and dynamic image size (positional embeddings are interpolated to any
input size). :class:`ViTEncoder` wraps it to run on the visible tokens only, which is what I-JEPA's
context encoder needs; the wrapped timm model is what gets exported, so the export loads with timm alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cxrjepa.core.errors import ConfigError

#: size name -> (timm base model, embed dim, depth, heads)
SIZES: dict[str, tuple[str, int, int, int]] = {
    "tiny": ("vit_tiny_patch16_224", 192, 12, 3),
    "small": ("vit_small_patch16_224", 384, 12, 6),
    "base": ("vit_base_patch16_224", 768, 12, 12),
    "large": ("vit_large_patch16_224", 1024, 24, 16),
    "huge": ("vit_huge_patch14_224", 1280, 32, 16),
    "giant": ("vit_giant_patch14_224", 1408, 40, 16),
}

Size = Literal["tiny", "small", "base", "large", "huge", "giant"]


@dataclass
class EncoderConfig:
    """The encoder architecture (saved with every run and export)."""

    size: Size = "tiny"
    patch_size: int = 16
    image_size: int = 224
    in_chans: int = 1
    drop_path: float = 0.0
    #: frames per tubelet for clip (video) encoders (V-JEPA: 2); 1 with ``frames: 1`` = a 2-D image encoder
    tubelet: int = 1
    #: frames per training clip for clip encoders (a multiple of ``tubelet``; 1 = an image encoder). Like
    #: ``image_size``, other clip lengths work at inference (the time embedding is interpolated)
    frames: int = 1
    #: number of transformer blocks when not the size's default (e.g. a 6-block ViT-Tiny for CPU runs)
    layers: int | None = None
    #: positional embedding: ``learned`` (timm's, random init) or ``sincos`` (fixed 2-D sin-cos, as in the
    #: I-JEPA and MAE reference encoders; stored in the weights, so exports load the same way)
    pos_embed: Literal["learned", "sincos"] = "learned"

    def validate(self) -> None:
        if self.patch_size not in (8, 14, 16, 32):
            raise ConfigError(f"'model.patch_size' must be 8, 14, 16 or 32, not {self.patch_size}.")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"'model.image_size' ({self.image_size}) must be a multiple of the patch size ({self.patch_size})."
            )
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError("'model.drop_path' must be in [0, 1).")
        if self.tubelet < 1 or self.frames < 1:
            raise ConfigError("'model.tubelet' and 'model.frames' must be at least 1.")
        if self.frames % self.tubelet or (self.tubelet > 1 and self.frames < self.tubelet):
            raise ConfigError(
                f"'model.frames' ({self.frames}) must be a multiple of 'model.tubelet' ({self.tubelet}); "
                "a clip encoder needs both (for example frames 16, tubelet 2)."
            )
        if self.layers is not None and self.layers < 1:
            raise ConfigError("'model.layers' must be at least 1 (or empty for the size's default).")

    @property
    def is_clip(self) -> bool:
        """A clip (video) encoder: 3-D tubelet patches, input (B, C, T, H, W)."""
        return self.frames > 1 or self.tubelet > 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Spatial(-temporal) shape of one training input: (H, W), or (T, H, W) for clip encoders."""
        s = self.image_size
        return (self.frames, s, s) if self.is_clip else (s, s)

    @property
    def timm_model(self) -> str:
        return SIZES[self.size][0]

    @property
    def embed_dim(self) -> int:
        return SIZES[self.size][1]

    @property
    def depth(self) -> int:
        return self.layers if self.layers is not None else SIZES[self.size][2]

    @property
    def mlp_ratio(self) -> float:
        return 4.0 if self.size != "giant" else 48 / 11

    @property
    def num_heads(self) -> int:
        return SIZES[self.size][3]

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return g, g

    def token_grid(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The token grid of an input of spatial ``shape`` ((H, W) images, (T, H, W) clips)."""
        *time, h, w = shape
        grid = (h // self.patch_size, w // self.patch_size)
        return (time[0] // self.tubelet, *grid) if time else grid

    def timm_kwargs(self) -> dict:
        """Keyword arguments for ``timm.create_model(self.timm_model, pretrained=False, **kwargs)``."""
        kwargs = {
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": 0,
            "global_pool": "avg",
            "class_token": False,
            "fc_norm": False,
            "dynamic_img_size": True,
            "drop_path_rate": self.drop_path,
        }
        if self.layers is not None:
            kwargs["depth"] = self.layers
        return kwargs


def create_vit(config: EncoderConfig) -> nn.Module:
    """The bare timm VisionTransformer for ``config`` (randomly initialised, never downloaded).

    Clip encoders get a 3-D tubelet patch embedding and a time embedding (cxrjepa.models.tubelet); timm
    alone cannot build those, so their exports load with ``cxrjepa.models.export.load_encoder``.
    """
    vit = timm.create_model(config.timm_model, pretrained=False, **config.timm_kwargs())
    if config.pos_embed == "sincos":
        from cxrjepa.models.posembed import sincos_grid

        with torch.no_grad():
            pe = vit.pos_embed
            pe.copy_(sincos_grid(pe.shape[-1], config.grid).reshape(pe.shape))
        pe.requires_grad_(False)
    if config.is_clip:
        from cxrjepa.models.tubelet import make_clip_vit

        make_clip_vit(vit, config)
    return vit


class ViTEncoder(nn.Module):
    """A timm ViT that can run on a subset of its patch tokens.

    ``tokens(x, keep)`` returns final-normed patch tokens (B, L, D) for the positions in ``keep``
    (B, K) or all positions; ``forward(x)`` returns the mean-pooled features (B, D).
    """

    def __init__(self, config: EncoderConfig, vit: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.vit = vit if vit is not None else create_vit(config)
        self.grad_checkpointing = False

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus (interpolated) positional embedding: (B, L, D).

        Images are (B, C, H, W); clip encoders take clips (B, C, T, H, W) and order tokens time-major."""
        vit = self.vit
        if self.config.is_clip:
            from cxrjepa.models.tubelet import embed_clip

            return embed_clip(vit, x)
        if x.ndim != 4:
            raise ValueError(f"an image encoder takes (B, C, H, W) images, not a tensor of shape {tuple(x.shape)}")
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def run_blocks(self, x: torch.Tensor, return_layers: int = 0) -> torch.Tensor | list[torch.Tensor]:
        """Transformer blocks + final norm; with ``return_layers=k`` the normed outputs of the last k blocks."""
        blocks = self.vit.blocks
        outs = []
        n = len(blocks)
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if return_layers and i >= n - return_layers:
                outs.append(self.vit.norm(x))
        if return_layers:
            return outs
        return self.vit.norm(x)

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(x)
        if keep is not None:
            x = gather_tokens(x, keep)
        return self.run_blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(dim=1)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens ``idx`` (B, K) from ``x`` (B, L, D) -> (B, K, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
