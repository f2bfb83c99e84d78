"""Settings of ``cxrjepa embed``: science (fingerprinted) and operations (not)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cxrjepa.core.errors import ConfigError


@dataclass
class EmbedConfig:
    """What the features are. Every field enters the embeddings' fingerprint."""

    #: per-image feature: ``mean`` of the last layer's patch tokens, ``cls`` (the CLS token, encoders that have
    #: one), or ``grid:RxC`` (``grid:K`` = ``grid:KxK``): the token grid average-pooled into R rows x C columns
    #: of zones, their R * C mean tokens concatenated row by row (R * C * D values; keeps *where*)
    pooling: str = "mean"
    #: also write features_last4 (N, 4 x the feature width): each of the last 4 blocks pooled as ``pooling``
    #: says (``mean`` for ``cls``), concatenated
    last4: bool = False
    #: also write patch_tokens (N, L, D): last-layer patch tokens on the encoder's grid (dense probes)
    patch_tokens: bool = False
    #: model input size; empty = the encoder's own (a cxrjepa encoder's training size, a timm/HF model's)
    image_size: int | None = None
    #: clips: embed at most this many evenly spaced frames per sample and pool them (1 = the middle frame)
    clip_frames: int = 16
    #: how a clip's frame features become one row: mean over its frames, or the middle frame only
    clip_pool: Literal["mean", "middle"] = "mean"
    #: dtype of features and features_last4
    dtype: Literal["float32", "float16"] = "float32"
    #: dtype of patch_tokens (they are large)
    patch_dtype: Literal["float16", "float32"] = "float16"
    #: extra copy for teams without zarr: features.npy (+ .npy per array) or features.parquet; zarr is always written
    format: Literal["zarr", "npy", "parquet"] = "zarr"
    #: seed of random:ARCH encoders
    seed: int = 0

    def validate(self) -> None:
        zones(self.pooling)
        if self.clip_frames < 1:
            raise ConfigError("'clip_frames' must be at least 1.")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError("'image_size' must be at least 8 pixels.")


@dataclass
class EmbedOptions:
    """How to run (not fingerprinted)."""

    #: auto (CUDA when available), cpu, or cuda
    device: str = "auto"
    #: GPU processes (one per GPU, torch.distributed); empty = 1 when CUDA is used
    gpus: int | None = None
    #: CPU processes (gloo), each with its own rows; for CPU servers and tests
    processes: int = 1
    #: frames per forward pass
    batch_size: int = 64
    #: DataLoader processes reading the dataset; empty = automatic
    workers: int | None = None
    #: refuse to start when the estimated peak memory of a batch does not fit (docs/pretrain.md, "Memory check")
    memory_check: bool = True


_GRID = re.compile(r"grid:(\d+)(?:x(\d+))?")


def zones(pooling: str) -> tuple[int, int] | None:
    """(rows, columns) of a ``grid:RxC`` / ``grid:K`` pooling, ``None`` for ``mean`` and ``cls``."""
    if pooling in ("mean", "cls"):
        return None
    m = _GRID.fullmatch(str(pooling))
    rows, cols = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if not 1 <= rows <= 64 or not 1 <= cols <= 64:
        raise ConfigError(f"'pooling' must be mean, cls or grid:RxC (R, C from 1 to 64), not '{pooling}'.")
    return rows, cols
