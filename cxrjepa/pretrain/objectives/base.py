"""The interface between the trainer and a pretraining objective."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from cxrjepa.models.vit import ViTEncoder
from cxrjepa.pretrain.masks import Masks

if TYPE_CHECKING:
    from cxrjepa.pretrain.config import PretrainConfig

MaskMaker = Callable[[np.random.Generator, int], Masks]


class Objective(nn.Module):
    """A pretraining objective.

    Subclasses set ``self.student`` (the trainable module: the trainer wraps it in DDP or FSDP and gives
    the wrapped callable to :meth:`loss`) and may hold frozen modules (listed by :meth:`frozen`). Hooks:

    * :meth:`masks` -- the (picklable) mask generator the data stream must attach to batches, or None;
    * :meth:`loss` -- ``(loss, extra scalars)`` for a batch on the device;
    * :meth:`after_step` -- called after every optimizer step (EMA updates); returns scalars to log;
    * :meth:`export_encoder` -- the encoder written to ``RUN/encoder/``;
    * :meth:`monitor_tokens` -- features watched for collapse (std, RankMe);
    * :meth:`step_flops` -- matrix FLOPs of one training step on a batch (for MFU);
    * :meth:`checkpoint_modules` -- modules saved as ``<name>.safetensors`` in each checkpoint;
    * :meth:`extra_state` / :meth:`load_extra_state` -- JSON-able state beyond tensors.
    """

    name: ClassVar[str] = ""
    student: nn.Module

    def __init__(self, config: "PretrainConfig"):
        super().__init__()
        self.config = config

    def frozen(self) -> list[nn.Module]:
        """Modules without gradients that still live on the device (and are sharded with FSDP)."""
        return []

    def masks(self, grid: tuple[int, ...]) -> MaskMaker | None:
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

    def train(self, mode: bool = True) -> "Objective":
        super().train(mode)
        for module in self.frozen():
            module.eval()
        return self
