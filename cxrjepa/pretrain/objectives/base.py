"""The interface between the trainer and a pretraining objective."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from cxrjepa.models.vit import ViTEncoder
from cxrjepa.pretrain.masks import Masks

if TYPE_CHECKING:
    from cxrjepa.pretrain.augment import ViewsConfig
    from cxrjepa.pretrain.config import PretrainConfig

MaskMaker = Callable[[np.random.Generator, int], Masks]
#: per-frame extras a data item carries besides its pixels: ``extras(frame_ids) -> {name: (n_frames, ...) array}``
ItemExtras = Callable[[np.ndarray], dict]


@dataclass
class ObjectiveInputs:
    """What an objective gets besides its config: the run's other inputs and the data's normalization."""

    #: the dataset's ``contents.normalization`` (``x = (stored / divide_by - mean) / std``)
    normalization: dict = field(default_factory=dict)
    #: SALT: the frozen teacher (a run, an export folder, ``timm:NAME``, a Hugging Face folder, ``random:ARCH``)
    teacher: str | None = None
    #: SALT with ``teacher: timm:NAME``: the local weights file
    teacher_weights: str | None = None
    #: a cxrjepa run or export whose encoder weights start the run (an image encoder is inflated for clips)
    init: str | None = None


@dataclass
class TrainEnv:
    """Where an objective runs (given to :meth:`Objective.prepare` once its modules are on the device)."""

    device: torch.device
    #: autocast dtype (bf16 on CUDA), or None for fp32
    amp: torch.dtype | None
    #: the process group (cxrjepa.runtime.DistInfo)
    info: Any
    #: the dataset artifact (cxrjepa.data.store.DatasetArtifact)
    data: Any
    #: the run folder
    run: Any
    #: the ``runtime`` config section (operational settings)
    runtime: Any


class StepTerms:
    """The loss terms of one optimizer step, averaged over its micro-batches: ``add`` them in :meth:`Objective.loss`
    (detached tensors: no device sync), ``pop`` them as floats in :meth:`Objective.after_step` to log them."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v.detach() if k in self.sums else v.detach()
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: float(v) / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def sigreg_blend(
    name: str, main: torch.Tensor, sig: torch.Tensor, weight: float, terms: StepTerms
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the SIGReg objectives (lejepa, jepa-sigreg): ``(1 - weight) * main + weight * sig``; both
    terms are added to the step's ``terms`` (logged as ``name`` and ``sigreg``) and returned detached."""
    logged = {name: main.detach(), "sigreg": sig.detach()}
    terms.add(logged)
    return (1.0 - weight) * main + weight * sig, logged


class Objective(nn.Module):
    """A pretraining objective.

    Subclasses set ``self.student`` (the trainable module: the trainer wraps it in DDP or FSDP and gives
    the wrapped callable to :meth:`loss`) and may hold frozen modules (listed by :meth:`frozen`). Hooks:

    * :meth:`masks` -- the (picklable) mask generator the data stream must attach to batches, or None;
    * :meth:`views` -- for multi-view objectives, the views each item carries (global views as ``images``
      (B, V, C, ...) and local ones as ``local`` (B, W, C, ...), in stored units: normalise ``local`` with
      :class:`cxrjepa.pretrain.data.Normalizer`), or None for one crop per item;
    * :meth:`loss` -- ``(loss, extra scalars)`` for a batch on the device;
    * :meth:`after_step` -- called after every optimizer step (EMA updates); returns scalars to log;
    * :meth:`export_encoder` -- the encoder written to ``RUN/encoder/``;
    * :meth:`monitor_tokens` -- features watched for collapse (std, RankMe);
    * :meth:`step_flops` -- matrix FLOPs of one training step on a batch (for MFU);
    * :meth:`checkpoint_modules` -- modules saved as ``<name>.safetensors`` in each checkpoint;
    * :meth:`extra_state` / :meth:`load_extra_state` -- JSON-able state beyond tensors.

    Optional hooks (defaults do nothing): :meth:`prepare` (after the modules are on the device),
    :meth:`item_extras` (per-frame data the loader attaches to items, e.g. cached teacher targets),
    :meth:`holdout_fraction` / :meth:`holdout_loss` (model selection on a held-out patient split),
    :meth:`init_encoders` (the encoders a ``init`` weights file is loaded into) and :meth:`describe`
    (what the run manifest records about the objective's inputs). Objectives that need the run's inputs
    (a teacher) set ``takes_inputs = True`` and accept ``inputs=`` (an :class:`ObjectiveInputs`).
    """

    name: ClassVar[str] = ""
    #: the constructor takes ``inputs=ObjectiveInputs(...)``
    takes_inputs: ClassVar[bool] = False
    student: nn.Module

    def __init__(self, config: PretrainConfig, inputs: ObjectiveInputs | None = None):
        super().__init__()
        self.config = config
        self.inputs = inputs or ObjectiveInputs()

    def frozen(self) -> list[nn.Module]:
        """Modules without gradients that still live on the device (kept in eval mode)."""
        return []

    def shard_frozen(self) -> list[nn.Module]:
        """The frozen modules FSDP shards (default: all of them; a frozen teacher stays whole on every rank)."""
        return self.frozen()

    def prepare(self, env: TrainEnv) -> None:
        """Called once the objective is on ``env.device``, before training (on every rank)."""

    def item_extras(self) -> ItemExtras | None:
        """A picklable callable giving per-frame extras for data items, or None."""
        return None

    @classmethod
    def holdout_fraction(cls, config: PretrainConfig) -> float:
        """Share of the patients held out for model selection (0 = none; all data trains)."""
        return 0.0

    def selection(self) -> tuple[int, bool, int]:
        """Model selection settings: (evaluate every N steps (0 = at the end), export the best student,
        at most this many held-out items evaluated)."""
        return 0, False, 512

    @torch.no_grad()
    def holdout_loss(self, batch: dict) -> torch.Tensor:
        """The loss of a held-out batch (the student in eval mode, no gradients)."""
        return self.loss(self.student, batch)[0]

    def selection_modules(self) -> dict[str, nn.Module]:
        """Modules saved as the best model when the held-out loss improves (``checkpoints/best``)."""
        return self.checkpoint_modules()

    def init_encoders(self) -> list[ViTEncoder]:
        """Encoders that an ``init`` encoder's weights are loaded into (default: every ViTEncoder it owns)."""
        return [m for m in self.modules() if isinstance(m, ViTEncoder)]

    def describe(self) -> dict:
        """Extra ``contents`` entries for the run manifest (e.g. ``teacher``)."""
        return {}

    def masks(self, grid: tuple[int, ...]) -> MaskMaker | None:
        return None

    def views(self) -> ViewsConfig | None:
        return None

    def loss(self, student: Callable[..., Any], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}

    def export_encoder(self) -> ViTEncoder:
        raise NotImplementedError

    def monitor_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.export_encoder().tokens(images)

    def step_flops(self, batch: dict) -> float:
        return 0.0

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        for module in self.frozen():
            module.eval()
        return self
