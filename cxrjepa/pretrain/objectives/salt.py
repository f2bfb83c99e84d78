"""SALT (static-teacher asymmetric latent training): predict a *frozen* teacher's latents of masked blocks.

Stage 2 of SALT / US-JEPA. A fresh student (ViT on the context tokens) and a narrow predictor regress the
teacher's tokens of the target blocks -- the I-JEPA architecture with the EMA target replaced by a frozen
teacher (any encoder cxrjepa can load: a cxrjepa run such as a ``--objective pixel`` teacher, a timm model
with local weights, a local Hugging Face folder such as RAD-DINO; see cxrjepa.pretrain.teacher).

* No EMA, so no collapse; the student's loss on held-out data tracks downstream quality (the SALT paper
  reports R^2 0.95-0.98), so the run holds out ``salt.holdout`` (5 %) of the patients, evaluates the
  student's loss on them every ``salt.select_every`` steps with fixed whole-frame inputs and fixed masks,
  keeps the best student in ``checkpoints/best`` and exports it (``salt.export: best``). The selection is
  recorded in the run manifest (``contents.selection``).
* Targets: the teacher's final-normed patch tokens on the student's grid, layer-normed (no affine) when
  ``salt.target_layernorm``; L1 loss by default (SALT; US-JEPA uses smooth-L1).
* The teacher runs in inference mode, in bf16 on CUDA; with whole-frame crops its targets can be cached
  once per frame (``runtime.teacher_cache``, cxrjepa.pretrain.targets) and the step skips its forward pass.
* Clips: tube masks, and an image teacher's tokens averaged over each tubelet's frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cxrjepa.core.errors import ConfigError, UsageError
from cxrjepa.models.flops import masked_student_flops
from cxrjepa.models.predictor import Predictor, PredictorConfig
from cxrjepa.models.vit import ViTEncoder, gather_tokens
from cxrjepa.pretrain.masks import MaskConfig, block_masks
from cxrjepa.pretrain.objectives.base import Objective, TrainEnv
from cxrjepa.pretrain.objectives.ijepa import JEPAStudent, regression_loss
from cxrjepa.pretrain.teacher import Teacher, TeacherConfig


@dataclass
class SALTConfig:
    """SALT settings: masks, predictor, loss, target normalisation, teacher grid, model selection."""

    masks: MaskConfig = field(default_factory=MaskConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    #: L1 as in SALT; US-JEPA uses smooth_l1
    loss: Literal["l1", "smooth_l1", "l2"] = "l1"
    #: layer norm (no affine) of the teacher's tokens before the loss
    target_layernorm: bool = True
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    #: share of the patients held out for model selection by the student's loss (0 = no selection)
    holdout: float = 0.05
    #: evaluate the held-out loss every this many steps (and at the end); 0 = at the end only
    select_every: int = 100
    #: at most this many held-out items are evaluated (a fixed, evenly spread subset)
    holdout_items: int = 512
    #: which student is exported: the one with the lowest held-out loss, or the last one
    export: Literal["best", "last"] = "best"

    def validate(self) -> None:
        if not 0.0 <= self.holdout < 0.5:
            raise ConfigError("'salt.holdout' must be in [0, 0.5) (a share of the patients; 0.05 = 5 %).")
        if self.select_every < 0 or self.holdout_items < 1:
            raise ConfigError("'salt.select_every' must not be negative and 'salt.holdout_items' must be at least 1.")
        if self.export == "best" and self.holdout == 0:
            raise ConfigError("'salt.export: best' needs a held-out split (salt.holdout > 0); use salt.export=last.")


class SALT(Objective):
    name = "salt"
    takes_inputs = True

    def __init__(self, config, inputs=None):
        super().__init__(config, inputs)
        self.settings: SALTConfig = config.salt
        if not self.inputs.teacher:
            raise UsageError(
                "--objective salt needs a frozen teacher: --teacher RUN, an export folder, timm:NAME "
                "with --teacher-weights FILE, or a local Hugging Face folder."
            )
        encoder = ViTEncoder(config.model)
        with torch.random.fork_rng(devices=[]):  # the student's initial weights do not depend on the teacher
            self.teacher = Teacher(
                self.inputs.teacher,
                weights=self.inputs.teacher_weights,
                student=config.model,
                config=self.settings.teacher,
                normalization=self.inputs.normalization,
            )
        predictor = Predictor(self.settings.predictor, encoder.embed_dim, out_dim=self.teacher.embed_dim)
        self.student = JEPAStudent(encoder, predictor)
        norm = self.inputs.normalization or {}
        self.in_mean, self.in_std = float(norm.get("mean", 0.5)), float(norm.get("std", 0.25))
        self.cache = None

    # ------------------------------------------------------------------ trainer hooks
    def frozen(self) -> list[nn.Module]:
        return [self.teacher]

    def shard_frozen(self) -> list[nn.Module]:
        return []  # the teacher stays whole on every rank (it has no gradients or optimizer state)

    def prepare(self, env: TrainEnv) -> None:
        if env.amp is not None:
            self.teacher.to_precision(env.amp)
        root = getattr(env.runtime, "teacher_cache", None)
        if root:
            from cxrjepa.encoders import encoder_input_ref
            from cxrjepa.pretrain.targets import build_cache, whole_frames_ok

            if not whole_frames_ok(self.config.augment):
                raise ConfigError(
                    "runtime.teacher_cache needs fixed whole-frame crops: set augment.crop_scale=[1,1], "
                    "augment.crop_ratio=[1,1] and augment.hflip=false (or drop the cache)."
                )
            if self.teacher.clip:
                raise ConfigError("A clip teacher's targets cannot be cached per frame; drop runtime.teacher_cache.")
            refs = [
                env.data.artifact.input_ref("data"),
                encoder_input_ref("teacher", self.inputs.teacher, self.inputs.teacher_weights),
            ]
            self.cache = build_cache(root, self.teacher, self.config.model, env.data, refs, env)

    def item_extras(self):
        return self.cache

    @classmethod
    def holdout_fraction(cls, config) -> float:
        return float(config.salt.holdout)

    def selection(self) -> tuple[int, bool, int]:
        return self.settings.select_every, self.settings.export == "best", self.settings.holdout_items

    def masks(self, grid):
        return block_masks(self.settings.masks, grid)

    # ------------------------------------------------------------------ the loss
    def teacher_tokens(self, batch: dict) -> torch.Tensor:
        """The teacher's tokens of the batch on the student's grid (B, L, D), layer-normed if asked."""
        images = batch["images"]
        grid = self.config.model.token_grid(tuple(images.shape[2:]))
        cached = batch.get("teacher_tokens")
        if cached is not None:
            h = cached.float()
            if h.ndim == 4:  # clips: (B, T, h*w, D) per frame -> mean over each tubelet's frames
                b, t, n, d = h.shape
                h = h.reshape(b, grid[0], t // grid[0], n, d).mean(dim=2).reshape(b, grid[0] * n, d)
        else:
            h = self.teacher(images.float() * self.in_std + self.in_mean, grid).float()
        if self.settings.target_layernorm:
            h = F.layer_norm(h, (h.shape[-1],))
        return h

    def loss(self, student, batch):
        images, context, targets = batch["images"], batch["context"], batch["targets"]
        b, m, t = targets.shape
        with torch.inference_mode():
            y = gather_tokens(self.teacher_tokens(batch), targets.reshape(b, m * t)).reshape(b, m, t, -1)
        y = y.clone()  # a normal tensor (inference tensors cannot be saved for backward)
        pred = student(images, context, targets)
        return regression_loss(self.settings.loss, pred.float(), y), {}

    # ------------------------------------------------------------------ the rest
    def export_encoder(self) -> ViTEncoder:
        return self.student.encoder

    def init_encoders(self) -> list[ViTEncoder]:
        return [self.student.encoder]

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.student.encoder, "predictor": self.student.predictor}

    def describe(self) -> dict:
        out = {"teacher": {**self.teacher.describe(), "cached": self.cache is not None}}
        if self.cache is not None:
            out["teacher_cache"] = str(self.cache.folder)
        return out

    def step_flops(self, batch: dict) -> float:
        cfg = self.config.model
        b = batch["images"].shape[0]
        grid = cfg.token_grid(tuple(batch["images"].shape[2:]))
        _, student = masked_student_flops(cfg, batch, self.settings.predictor, self.teacher.embed_dim)
        teacher = 0.0
        if "teacher_tokens" not in batch:  # ~2 FLOPs per parameter per token (matrix work of a transformer)
            size = self.teacher.input_size(grid[-2:])
            tg = self.teacher.teacher_grid(size)
            frames = batch["images"].shape[2] if batch["images"].ndim == 5 and not self.teacher.clip else 1
            params = sum(p.numel() for p in self.teacher.parameters())
            teacher = 2.0 * params * tg[0] * tg[1] * b * frames
        return 3.0 * student + teacher
