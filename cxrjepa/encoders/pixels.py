"""``pixels:SIZE`` -- no network: the image downsampled (area) to SIZE x SIZE and flattened, normalised with
the dataset's mean/std (the "does the encoder beat raw pixels?" baseline); one token of SIZE^2 values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core.errors import UsageError
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.encoders.base import EncoderOutput, FeatureEncoder, Preprocess, grey_stats, normalization_of
from cxrjepa.encoders.registry import EncoderSpec, LoadOptions, register_encoder


class PixelTokens(nn.Module):
    """The prepared image itself, flattened: one token of ``C * H * W`` values."""

    def forward(self, x: torch.Tensor, n_layers: int = 1) -> EncoderOutput:
        token = x.flatten(1).unsqueeze(1)
        return EncoderOutput([token] * max(n_layers, 1))


class PixelEncoder(FeatureEncoder):
    """``pixels:SIZE``: the image area-averaged to SIZE x SIZE (whatever the input size), normalised; its
    single token covers the whole image."""

    def prepare(self, x: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x.float(), self.image_size)
        return (x - self._mean) / self._std

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        return 1, 1


@register_encoder("pixels", prefix="pixels:", usage="pixels:SIZE")
def load_pixel_encoder(spec: EncoderSpec, options: LoadOptions) -> FeatureEncoder:
    size_text = spec.target
    if not size_text.isdigit() or not 2 <= int(size_text) <= 256:
        raise UsageError(f"Use pixels:SIZE with SIZE a whole number from 2 to 256, not '{spec.text}'.")
    size = int(size_text)
    norm = normalization_of(options.normalization)
    mean, std = grey_stats(norm.mean, norm.std)
    return PixelEncoder(
        PixelTokens(),
        source="pixels",
        spec=spec.text,
        preprocess=Preprocess(size, 1, mean, std),
        embed_dim=size * size,
        patch_size=size,
        num_prefix_tokens=0,
        fingerprint=hash_obj({"pixels": size, "mean": mean, "std": std}),
        info={"pixels": size},
    )
