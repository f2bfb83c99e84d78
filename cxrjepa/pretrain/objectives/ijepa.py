"""I-JEPA: predict the EMA target encoder's (layer-normed) features of masked blocks from a context block.

Context encoder (on context tokens only) + narrow predictor are trained; the target encoder is an
exponential moving average of the context encoder, its momentum rising linearly over the run
(0.996 -> 1.0), updated with one fused ``torch._foreach_lerp_`` over all parameters. The exported
encoder is the EMA target, as in the reference evaluation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core.errors import ConfigError
from cxrjepa.models.flops import encoder_flops, masked_student_flops
from cxrjepa.models.predictor import Predictor, PredictorConfig
from cxrjepa.models.vit import ViTEncoder, gather_tokens
from cxrjepa.pretrain.masks import MaskConfig, block_masks
from cxrjepa.pretrain.objectives.base import Objective
from cxrjepa.pretrain.schedules import linear
from cxrjepa.pretrain.sigreg import SIGReg


@dataclass
class IJEPAConfig:
    """I-JEPA settings: masks, predictor, EMA momentum range, loss and target normalisation."""

    masks: MaskConfig = field(default_factory=MaskConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    #: EMA momentum at the start and at the end of the run (linear in between)
    ema: tuple[float, float] = (0.996, 1.0)
    loss: Literal["smooth_l1", "l1", "l2"] = "smooth_l1"
    #: layer norm (no affine) of the target features before the loss
    target_layernorm: bool = True

    def validate(self) -> None:
        if not all(0.0 <= m <= 1.0 for m in self.ema):
            raise ConfigError("'ijepa.ema' momenta must be in [0, 1].")


def regression_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    return F.mse_loss(pred, target)


class JEPAStudent(nn.Module):
    """Context encoder + predictor: ``forward(images, context, targets)`` -> predictions (B, M, T, D), and with
    ``return_context=True`` also the context encoder's tokens (B, K, D)."""

    def __init__(self, encoder: ViTEncoder, predictor: Predictor):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, images: torch.Tensor, context: torch.Tensor, targets: torch.Tensor, return_context: bool = False):
        z = self.encoder.tokens(images, context)
        grid = self.encoder.config.token_grid(tuple(images.shape[2:]))
        pred = self.predictor(z, context, targets, grid)
        return (pred, z) if return_context else pred


def context_sigreg(config) -> SIGReg | None:
    """The optional extra SIGReg term of ijepa / salt students (``sigreg.weight`` > 0), else None."""
    return SIGReg(config.sigreg, config.train.seed) if config.sigreg.weight > 0 else None


def student_predictions(student, batch: dict, sigreg: SIGReg | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The student's predictions of ``batch``'s target blocks and, with ``sigreg``, the SIGReg statistic of its
    context encoder's mean-pooled tokens (else None)."""
    images, context, targets = batch["images"], batch["context"], batch["targets"]
    if sigreg is None:
        return student(images, context, targets), None
    pred, z = student(images, context, targets, return_context=True)
    return pred, sigreg(z.mean(dim=1), batch["step"])


def with_sigreg(loss: torch.Tensor, term: torch.Tensor | None, weight: float) -> tuple[torch.Tensor, dict]:
    """``loss + weight * term`` and the scalars to report (none without the term)."""
    if term is None:
        return loss, {}
    return loss + weight * term, {"sigreg": term.detach()}


class IJEPA(Objective):
    name = "ijepa"

    def __init__(self, config):
        super().__init__(config)
        self.settings: IJEPAConfig = config.ijepa
        encoder = ViTEncoder(config.model)
        self.student = JEPAStudent(encoder, Predictor(self.settings.predictor, encoder.embed_dim))
        self.target = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.sigreg = context_sigreg(config)

    def frozen(self) -> list[nn.Module]:
        return [self.target]

    def masks(self, grid):
        return block_masks(self.settings.masks, grid)  # tube masks for clip encoders

    def loss(self, student, batch):
        images, targets = batch["images"], batch["targets"]
        b, m, t = targets.shape
        with torch.no_grad():
            h = self.target.tokens(images)
            if self.settings.target_layernorm:
                h = F.layer_norm(h.float(), (h.shape[-1],))
            y = gather_tokens(h, targets.reshape(b, m * t)).reshape(b, m, t, -1)
        pred, term = student_predictions(student, batch, self.sigreg)
        loss = regression_loss(self.settings.loss, pred.float(), y.float())
        return with_sigreg(loss, term, self.config.sigreg.weight)

    def momentum(self, step: int, total_steps: int) -> float:
        return linear(step, total_steps, *self.settings.ema)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """EMA update with the momentum of ``step`` (the step just taken)."""
        m = self.momentum(step, total_steps)
        for module in (self.target, self.student):  # FSDP2: update the sharded parameters, shard by shard
            if hasattr(module, "reshard"):
                module.reshard()
        tgt = [_local(p) for p in self.target.parameters()]
        src = [_local(p) for p in self.student.encoder.parameters()]
        torch._foreach_lerp_(tgt, src, 1.0 - m)
        return {"momentum": m}

    def export_encoder(self) -> ViTEncoder:
        return self.target

    def monitor_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.target.tokens(images)

    def step_flops(self, batch: dict) -> float:
        cfg = self.config.model
        n_tok, student = masked_student_flops(cfg, batch, self.settings.predictor, cfg.embed_dim)
        return 3.0 * student + encoder_flops(cfg, n_tok, batch["images"].shape[0])  # + the EMA target's forward

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.student.encoder, "predictor": self.student.predictor, "target": self.target}


def _local(p: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 (DTensor) parameter, or the parameter itself."""
    return p.to_local() if hasattr(p, "to_local") else p
