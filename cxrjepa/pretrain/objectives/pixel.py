"""Masked-block pixel reconstruction: SALT's stage-1 teacher (MAE-like, on I-JEPA's masks).

The encoder sees the context block (the image minus the target blocks, visible tokens only); a light
decoder -- the predictor ViT with one learned mask token at the target positions, each block in its own
sequence -- regresses the target patches' pixels. Targets are per-patch normalised pixels (each patch minus
its mean, divided by its standard deviation: MAE's ``norm_pix_loss``), which makes the teacher model
structure rather than brightness. Clip encoders reconstruct whole tubelets under tube masks.

No EMA and no collapse: the loss goes down as the encoder learns. The exported encoder is the trained
encoder; it is meant to be frozen and used as a SALT teacher (``--objective salt --teacher RUN``), and the
SALT paper found briefly trained teachers (about 1/6 of the student's steps) make the best students.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from cxrjepa.models.flops import masked_student_flops
from cxrjepa.models.predictor import Predictor, PredictorConfig
from cxrjepa.models.vit import EncoderConfig, ViTEncoder, gather_tokens
from cxrjepa.pretrain.masks import MaskConfig, block_masks
from cxrjepa.pretrain.objectives.base import Objective
from cxrjepa.pretrain.objectives.ijepa import JEPAStudent, regression_loss


def _light_decoder() -> PredictorConfig:
    return PredictorConfig(depth=2, width=192)


@dataclass
class PixelConfig:
    """Pixel-reconstruction settings: masks, the light decoder, target normalisation and loss."""

    masks: MaskConfig = field(default_factory=MaskConfig)
    #: the light decoder (a narrow ViT predicting each target block's pixels from the context)
    decoder: PredictorConfig = field(default_factory=_light_decoder)
    #: per-patch normalised pixel targets (MAE's norm_pix_loss)
    norm_pix: bool = True
    loss: Literal["l2", "l1", "smooth_l1"] = "l2"


def patch_pixels(config: EncoderConfig) -> int:
    """Values per token: patch x patch x tubelet x channels."""
    return config.patch_size**2 * config.tubelet * config.in_chans


def patchify(x: torch.Tensor, config: EncoderConfig) -> torch.Tensor:
    """Images (B, C, H, W) or clips (B, C, T, H, W) -> (B, L, patch_pixels), tokens in the encoder's order."""
    p, t = config.patch_size, config.tubelet
    if x.ndim == 4:
        b, c, h, w = x.shape
        x = x[:, :, : h - h % p, : w - w % p].reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
    b, c, n, h, w = x.shape
    x = x[:, :, : n - n % t, : h - h % p, : w - w % p].reshape(b, c, n // t, t, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (n // t) * (h // p) * (w // p), t * p * p * c)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


class PixelReconstruction(Objective):
    name = "pixel"

    def __init__(self, config):
        super().__init__(config)
        self.settings: PixelConfig = config.pixel
        encoder = ViTEncoder(config.model)
        decoder = Predictor(self.settings.decoder, encoder.embed_dim, out_dim=patch_pixels(config.model))
        self.student = JEPAStudent(encoder, decoder)

    def masks(self, grid):
        return block_masks(self.settings.masks, grid)

    def loss(self, student, batch):
        images, context, targets = batch["images"], batch["context"], batch["targets"]
        b, m, t = targets.shape
        with torch.no_grad():
            y = patchify(images.float(), self.config.model)
            if self.settings.norm_pix:
                y = normalize_patches(y)
            y = gather_tokens(y, targets.reshape(b, m * t)).reshape(b, m, t, -1)
        pred = student(images, context, targets)
        return regression_loss(self.settings.loss, pred.float(), y), {}

    def export_encoder(self) -> ViTEncoder:
        return self.student.encoder

    def step_flops(self, batch: dict) -> float:
        cfg = self.config.model
        return 3.0 * masked_student_flops(cfg, batch, self.settings.decoder, patch_pixels(cfg))[1]

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.student.encoder, "decoder": self.student.predictor}
