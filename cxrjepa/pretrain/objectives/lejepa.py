"""LeJEPA: multi-view invariance plus SIGReg, one encoder, no teacher (Balestriero & LeCun, arXiv 2511.08544).

Every item brings V global and W local views (cxrjepa.pretrain.data.PretrainViews: crops with their own
grey-level jitter; spatio-temporal crops for clip encoders). The encoder embeds each view (mean-pooled
tokens; local views at their smaller size, positions interpolated), a projector MLP with global-batch batch
norm maps the embeddings to K dimensions, and the loss is

    (1 - lambda) * invariance + lambda * SIGReg,

where invariance is the mean squared distance of every view's projection to the mean of the item's global
views' projections (gradients flow through the mean too), and SIGReg (cxrjepa.pretrain.sigreg) is computed on
each view's (B, K) projections separately and averaged over the views (``lejepa.sigreg_views: each``; ``all``
pools the views' projections into one sample). docs/pretrain.md says why.

No EMA copy, no stop-gradient, no predictor: the trained modules are the encoder and the projector, and the
exported encoder is the encoder itself (the projector is dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from cxrjepa.core import console
from cxrjepa.core.errors import ConfigError, CxrjepaError
from cxrjepa.models.flops import encoder_flops, linear_flops
from cxrjepa.models.projector import Projector, ProjectorConfig
from cxrjepa.models.vit import ViTEncoder
from cxrjepa.pretrain.augment import ViewsConfig
from cxrjepa.pretrain.data import Normalizer
from cxrjepa.pretrain.objectives.base import Objective, StepTerms, TrainEnv, sigreg_blend
from cxrjepa.pretrain.sigreg import SIGReg


@dataclass
class LeJEPAConfig:
    """LeJEPA settings: the views, the projector, the SIGReg weight and where SIGReg applies."""

    views: ViewsConfig = field(default_factory=ViewsConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    #: lambda: loss = (1 - lambda) * invariance + lambda * SIGReg (the paper: 0.02-0.05)
    sigreg_weight: float = 0.05
    #: SIGReg on each view's projections, averaged over views (``each``), or on all views pooled (``all``)
    sigreg_views: Literal["each", "all"] = "each"

    def validate(self) -> None:
        if not 0.0 <= self.sigreg_weight <= 1.0:
            raise ConfigError("'lejepa.sigreg_weight' must be in [0, 1] (loss = (1 - w) * invariance + w * SIGReg).")


def flat_views(x: torch.Tensor) -> torch.Tensor:
    """(B, V, C, ...) -> (V * B, C, ...), view-major (the rows of view v are ``[v * B, (v + 1) * B)``)."""
    return x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def tokens_of(config, x: torch.Tensor) -> int:
    return math.prod(config.token_grid(tuple(x.shape[2:])))


class LeJEPAStudent(nn.Module):
    """Encoder + projector: ``forward(global_views, local_views)`` -> projections ((V + W) * B, K), view-major."""

    def __init__(self, encoder: ViTEncoder, projector: Projector):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens (a forward method: FSDP gathers the parameters for it too)."""
        return self.encoder.tokens(x)

    def forward(self, global_views: torch.Tensor, local_views: torch.Tensor | None) -> torch.Tensor:
        feats = [self.encoder(global_views)]
        if local_views is not None:
            feats.append(self.encoder(local_views))
        return self.projector(torch.cat(feats))


class LeJEPA(Objective):
    name = "lejepa"

    def __init__(self, config):
        super().__init__(config)
        self.settings: LeJEPAConfig = config.lejepa
        encoder = ViTEncoder(config.model)
        projector = Projector(self.settings.projector, encoder.embed_dim)
        if projector.removes_shifts:
            # the encoder's final norm bias shifts every embedding alike, which the projector's batch norm removes:
            # its true gradient is zero, and Adam would turn the rounding noise in it into lr-sized steps
            encoder.vit.norm.bias.requires_grad_(False)
        self.student = LeJEPAStudent(encoder, projector)
        self.sigreg = SIGReg(config.sigreg, config.train.seed)
        self.normalizer: Normalizer | None = None
        self.terms = StepTerms()

    def views(self) -> ViewsConfig:
        return self.settings.views

    def prepare(self, env: TrainEnv) -> None:
        self.normalizer = Normalizer(env.data.normalization)
        if env.runtime.grad_accum > 1 and env.info.is_main:
            console.warn(
                "lejepa with runtime.grad_accum > 1: SIGReg and the projector's batch norm see each "
                "micro-batch (all processes together), not the whole global batch; the run differs from "
                "one without accumulation."
            )

    # ------------------------------------------------------------------ the loss
    def loss(self, student, batch):
        images = batch["images"]
        b, v = images.shape[:2]
        local = batch.get("local")
        if local is not None:
            if self.normalizer is None:
                raise CxrjepaError("Internal error: LeJEPA.prepare was not called.")
            local = flat_views(self.normalizer(local))
        proj = student(flat_views(images), local).float()
        proj = proj.reshape(-1, b, proj.shape[-1])  # (V + W, B, K)
        centers = proj[:v].mean(dim=0)
        invariance = (proj - centers).square().mean()
        z = proj if self.settings.sigreg_views == "each" else proj.reshape(1, -1, proj.shape[-1])
        sig = self.sigreg(z, batch["step"])
        return sigreg_blend("invariance", invariance, sig, self.settings.sigreg_weight, self.terms)

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """This step's loss terms (this process's invariance; SIGReg is global), averaged over micro-batches."""
        return self.terms.pop()

    # ------------------------------------------------------------------ the rest
    def export_encoder(self) -> ViTEncoder:
        return self.student.encoder

    def monitor_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.student.tokens(images)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.student.encoder, "projector": self.student.projector}

    def step_flops(self, batch: dict) -> float:
        cfg = self.config.model
        images, local = batch["images"], batch.get("local")
        b, v = images.shape[:2]
        rows = b * v
        flops = encoder_flops(cfg, tokens_of(cfg, images[:, 0]), rows)
        if local is not None:
            flops += encoder_flops(cfg, tokens_of(cfg, local[:, 0]), b * local.shape[1])
            rows += b * local.shape[1]
        flops += self.student.projector.flops(rows) + linear_flops(
            rows, self.student.projector.out_dim, self.sigreg.slices
        )
        return 3.0 * flops
