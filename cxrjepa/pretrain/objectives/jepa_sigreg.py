"""JEPA-SIGReg: I-JEPA's masked-block prediction with SIGReg in place of the EMA target.

The masks and the predictor are I-JEPA's (cxrjepa.pretrain.objectives.ijepa). The targets are the *same*
encoder's (layer-normed) tokens of the full image, computed in the same training step, and collapse -- which
nothing else prevents once the EMA target is gone -- is prevented by SIGReg (cxrjepa.pretrain.sigreg) on the
encoder's embeddings of the full image (mean-pooled per image by default, ``jepa_sigreg.sigreg_on``). The loss:

    (1 - lambda) * prediction + lambda * SIGReg.

``jepa_sigreg.target_grad`` says whether the prediction loss also trains the encoder through the targets
(LeJEPA's "no stop-gradient") or treats them as constants (stop-gradient, as I-JEPA does with its EMA
targets); SIGReg always reaches the encoder through the full-image pass. docs/pretrain.md gives the choice
and the measurements behind it. One encoder, one predictor, one optimizer; nothing frozen. The exported
encoder is the encoder.
"""

from __future__ import annotations

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
from cxrjepa.pretrain.objectives.base import Objective, StepTerms, sigreg_blend
from cxrjepa.pretrain.objectives.ijepa import JEPAStudent, regression_loss
from cxrjepa.pretrain.sigreg import SIGReg


@dataclass
class JEPASigRegConfig:
    """JEPA-SIGReg settings: I-JEPA's masks, predictor and loss; the SIGReg weight, where it applies, and
    whether the targets carry gradient."""

    masks: MaskConfig = field(default_factory=MaskConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    loss: Literal["smooth_l1", "l1", "l2"] = "smooth_l1"
    #: layer norm (no affine) of the target tokens before the loss
    target_layernorm: bool = True
    #: lambda: loss = (1 - lambda) * prediction + lambda * SIGReg
    sigreg_weight: float = 0.05
    #: SIGReg on each image's mean-pooled tokens (``pooled``: (B, D), what probes see) or on every token
    #: (``tokens``: (B * L, D))
    sigreg_on: Literal["pooled", "tokens"] = "pooled"
    #: the prediction loss back-propagates into the encoder through the targets too (false: stop-gradient)
    target_grad: bool = False

    def validate(self) -> None:
        if not 0.0 < self.sigreg_weight < 1.0:
            raise ConfigError(
                "'jepa_sigreg.sigreg_weight' must be in (0, 1): without SIGReg nothing prevents "
                "collapse, without prediction nothing is learned."
            )


class JEPASigRegStudent(JEPAStudent):
    """Encoder + predictor: ``forward(images, context, targets)`` -> (predictions (B, M, T, D'), the encoder's
    tokens of the full images (B, L, D))."""

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens (a forward method: FSDP gathers the parameters for it too)."""
        return self.encoder.tokens(x)

    def forward(self, images: torch.Tensor, context: torch.Tensor, targets: torch.Tensor):
        return super().forward(images, context, targets), self.encoder.tokens(images)


class JEPASigReg(Objective):
    name = "jepa-sigreg"

    def __init__(self, config):
        super().__init__(config)
        self.settings: JEPASigRegConfig = config.jepa_sigreg
        encoder = ViTEncoder(config.model)
        self.student = JEPASigRegStudent(encoder, Predictor(self.settings.predictor, encoder.embed_dim))
        self.sigreg = SIGReg(config.sigreg, config.train.seed)
        self.terms = StepTerms()

    def masks(self, grid):
        return block_masks(self.settings.masks, grid)

    def loss(self, student, batch):
        images, context, targets = batch["images"], batch["context"], batch["targets"]
        b, m, t = targets.shape
        pred, h = student(images, context, targets)
        y = h.float() if self.settings.target_grad else h.detach().float()
        if self.settings.target_layernorm:
            y = F.layer_norm(y, (y.shape[-1],))
        y = gather_tokens(y, targets.reshape(b, m * t)).reshape(b, m, t, -1)
        prediction = regression_loss(self.settings.loss, pred.float(), y)
        emb = h.mean(dim=1) if self.settings.sigreg_on == "pooled" else h.reshape(-1, h.shape[-1])
        sig = self.sigreg(emb, batch["step"])
        return sigreg_blend("prediction", prediction, sig, self.settings.sigreg_weight, self.terms)

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """This step's loss terms (this process's prediction loss; SIGReg is global), averaged over micro-batches."""
        return self.terms.pop()

    def export_encoder(self) -> ViTEncoder:
        return self.student.encoder

    def monitor_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.student.tokens(images)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.student.encoder, "predictor": self.student.predictor}

    def step_flops(self, batch: dict) -> float:
        cfg = self.config.model
        n_tok, student = masked_student_flops(cfg, batch, self.settings.predictor, cfg.embed_dim)
        return 3.0 * (student + encoder_flops(cfg, n_tok, batch["images"].shape[0]))  # + the full-image pass
