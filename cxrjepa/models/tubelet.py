"""Clip (video) encoders: 3-D tubelet patch embedding on a timm ViT, and inflating image encoders to it.

A clip encoder is the same timm ``VisionTransformer`` as an image encoder (blocks, norms, spatial positional
embedding) whose ``patch_embed`` is a :class:`TubeletEmbed` -- a ``Conv3d`` cutting a clip
``(B, C, T, H, W)`` into tubelets of ``tubelet x patch x patch`` pixels (V-JEPA: 2 x 16 x 16) -- plus a
``time_embed`` parameter ``(1, T', D)`` (T' = frames / tubelet), learned and zero at initialisation.

Positions are separable: token ``(t, y, x)`` gets the encoder's 2-D spatial embedding of ``(y, x)`` (sin-cos
or learned, interpolated to the grid exactly as for images) plus ``time_embed[t]`` (linearly interpolated when
a clip has another number of tubelets than the training clips). Tokens are ordered time-major, row-major
(``t * h * w + y * w + x``): the flat order of :meth:`EncoderConfig.token_grid` that masks and predictors use.

Why separable rather than V-JEPA's 3-D sin-cos table: an image encoder *inflates* exactly. Its patch
weights are repeated over the tubelet's frames and divided by the tubelet length (I3D inflation) and its
spatial positions are kept, so on a still clip (one frame repeated) the inflated encoder gives, at every
time step, the image encoder's tokens of that frame (tested). Training then learns the time embedding.

timm alone cannot build a clip encoder (its patch embedding is 2-D): load exports with
:func:`cxrjepa.models.export.load_encoder`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PATCH_WEIGHT = "patch_embed.proj.weight"
TIME_EMBED = "time_embed"


class TubeletEmbed(nn.Module):
    """``(B, C, T, H, W)`` -> ``(B, T / tubelet, H / patch, W / patch, D)`` tubelet tokens (channels last)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, tubelet: int, grid: tuple[int, int]):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.tubelet = tubelet
        #: the spatial grid of the training size (timm resamples the positional embedding from it)
        self.grid_size = tuple(grid)
        self.proj = nn.Conv3d(
            in_chans, embed_dim, kernel_size=(tubelet, patch_size, patch_size), stride=(tubelet, patch_size, patch_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"a clip encoder takes (B, C, T, H, W) clips, not a tensor of shape {tuple(x.shape)}")
        t, h, w = x.shape[-3:]
        p = self.patch_size[0]
        if t % self.tubelet or h % p or w % p:
            x = x[..., : t - t % self.tubelet, : h - h % p, : w - w % p]
        return self.proj(x).permute(0, 2, 3, 4, 1)


def make_clip_vit(vit: nn.Module, config) -> nn.Module:
    """Turn a freshly built timm ViT into the clip encoder of ``config`` (an EncoderConfig) in place."""
    dim = vit.embed_dim
    old = vit.patch_embed
    embed = TubeletEmbed(config.in_chans, dim, config.patch_size, config.tubelet, config.grid)
    with torch.no_grad():  # the same initialisation as timm's 2-D patch projection, spread over the tubelet
        w2 = old.proj.weight
        embed.proj.weight.copy_(w2.unsqueeze(2).expand(-1, -1, config.tubelet, -1, -1) / config.tubelet)
        embed.proj.bias.copy_(old.proj.bias)
    vit.patch_embed = embed
    vit.time_embed = nn.Parameter(torch.zeros(1, config.frames // config.tubelet, dim))
    return vit


def time_positions(time_embed: torch.Tensor, steps: int) -> torch.Tensor:
    """``time_embed`` (1, T0, D) for ``steps`` tubelets: itself, or linearly interpolated: (1, steps, D)."""
    if time_embed.shape[1] == steps:
        return time_embed
    return F.interpolate(time_embed.transpose(1, 2), size=steps, mode="linear", align_corners=False).transpose(1, 2)


def embed_clip(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tubelet embedding plus separable positions for a clip encoder: (B, C, T, H, W) -> (B, T'*h*w, D)."""
    x = vit.patch_embed(x)
    b, t, h, w, d = x.shape
    x = vit._pos_embed(x.reshape(b * t, h, w, d))  # spatial positions, interpolated like an image's
    x = x.reshape(b, t, h * w, d) + time_positions(vit.time_embed, t).unsqueeze(2).to(x.dtype)
    x = vit.patch_drop(x.reshape(b, t * h * w, d))
    return vit.norm_pre(x)


def inflate_state_dict(image_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The state dict of the clip encoder ``config`` made from an image encoder's (same width and depth).

    The 2-D patch weights are repeated over the tubelet's frames and divided by its length; the time
    embedding starts at zero; everything else is copied.
    """
    state = dict(image_state)
    w = state[PATCH_WEIGHT]
    if w.ndim == 4:
        state[PATCH_WEIGHT] = w.unsqueeze(2).repeat(1, 1, config.tubelet, 1, 1) / config.tubelet
    if TIME_EMBED not in state:
        state[TIME_EMBED] = torch.zeros(1, config.frames // config.tubelet, w.shape[0], dtype=w.dtype)
    return state
