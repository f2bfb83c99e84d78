"""The fixed check batch: images, and the features ``cxrjepa embed`` computes for them.

Every exported format is run on the same batch and compared with the PyTorch encoder as ``cxrjepa embed``
loads and runs it (:class:`cxrjepa.embed.extract.Extractor`, float32 on the CPU): the largest absolute
difference over the pooled features and the patch tokens is the format's ``max_abs_diff``.

The batch comes from a dataset (the run's own, or ``--data``): ``check_samples`` samples spread evenly over
it, the middle frame of each (a clip encoder: one centred window of its clip length). A bare export folder
with no dataset is checked on seeded synthetic images instead, and the manifest says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrjepa.data.store import DatasetArtifact
from cxrjepa.embed.config import EmbedConfig
from cxrjepa.embed.extract import FEATURES, PATCH, Extractor
from cxrjepa.embed.reader import encoder_clip, plan_for, read_frames
from cxrjepa.encoders import FeatureEncoder


@dataclass
class CheckBatch:
    """``stored``: the frames as a dataset stores them, (F, H, W) integers; ``images``: the exported graphs'
    input, [0, 1] intensities at the encoder's size, (N, 1, S, S) or clips (N, 1, T, S, S); ``features`` (N, D)
    and ``patch_tokens`` (N, L, D): what ``cxrjepa embed`` computes for them; ``source``: for the manifest."""

    stored: np.ndarray
    max_value: float
    images: torch.Tensor
    features: np.ndarray
    patch_tokens: np.ndarray
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def stored_images(self) -> np.ndarray:
        """The stored frames as float32 (N, 1, H, W) (image encoders): what a Hugging Face image processor gets."""
        return self.stored.astype(np.float32)[:, None]


def dataset_frames(
    data: str | Path, encoder: FeatureEncoder, samples: int
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """(frames (F, H, W), frames per row, maximum stored value, source) of ``samples`` evenly spread rows."""
    ds = DatasetArtifact.open(data)
    n = len(ds)
    rows = np.unique(np.linspace(0, n - 1, min(samples, n)).round().astype(np.int64))
    starts, counts = ds.frame_index
    clip = encoder_clip(encoder)
    plan = plan_for(clip, starts[rows], counts[rows], clip[0] if clip else 1, "middle")
    frames = read_frames(ds.images, plan.frames)
    source = {
        "kind": "dataset",
        "path": str(Path(data).resolve()),
        "fingerprint": ds.artifact.content_fingerprint,
        "rows": rows.tolist(),
    }
    return frames, plan.counts(), ds.max_value, source


def synthetic_frames(
    encoder: FeatureEncoder, samples: int, seed: int, max_value: float
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Seeded uniform-noise frames at the encoder's size, in the integer type ``max_value`` implies."""
    dtype = np.uint8 if max_value <= 255 else np.uint16
    per_row = encoder.clip_frames if encoder.clip_frames > 1 else 1
    size = encoder.image_size
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, int(np.iinfo(dtype).max) + 1, (samples * per_row, size, size)).astype(dtype)
    source = {
        "kind": "synthetic",
        "seed": seed,
        "dtype": np.dtype(dtype).name,
        "note": "no dataset was known for this encoder: checked on seeded synthetic images (uniform noise)",
    }
    return frames, np.full(samples, per_row, dtype=np.int64), float(np.iinfo(dtype).max), source


def model_input(frames: np.ndarray, counts: np.ndarray, max_value: float, encoder: FeatureEncoder) -> torch.Tensor:
    """The exported graphs' input for stored ``frames``: [0, 1] intensities resized (as embed does) to the
    encoder's size; clip encoders get (N, 1, T, S, S) windows."""
    x = torch.from_numpy(frames.astype(np.float32)).div_(float(max_value)).unsqueeze(1)
    size = encoder.image_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if encoder.clip_frames > 1:
        t = encoder.clip_frames
        x = x.reshape(len(counts), t, 1, size, size).transpose(1, 2).contiguous()
    return x


def make_check_batch(
    encoder: FeatureEncoder, data: str | Path | None, samples: int, seed: int, divide_by: float
) -> CheckBatch:
    """The check batch from ``data`` (a dataset artifact), or a synthetic one when ``data`` is ``None``."""
    if data is not None:
        frames, counts, max_value, source = dataset_frames(data, encoder, samples)
    else:
        frames, counts, max_value, source = synthetic_frames(encoder, samples, seed, divide_by)
    as_read = frames.astype(np.int32) if frames.dtype == np.uint16 else frames  # as embed's reader hands them over
    extract = Extractor(encoder, EmbedConfig(patch_tokens=True), torch.device("cpu"), max_value)
    ref = extract(torch.from_numpy(np.ascontiguousarray(as_read)), torch.from_numpy(np.asarray(counts)))
    images = model_input(frames, counts, max_value, encoder)
    source["samples"] = int(images.shape[0])
    return CheckBatch(frames, max_value, images, ref[FEATURES], ref[PATCH], source)


def max_abs_diff(batch: CheckBatch, features: np.ndarray, tokens: np.ndarray, rows: slice = slice(None)) -> float:
    """Largest absolute difference of ``features`` and ``tokens`` from the reference's ``rows``."""
    f_ref, t_ref = batch.features[rows], batch.patch_tokens[rows]
    if features.shape != f_ref.shape or tokens.shape != t_ref.shape:
        return float("inf")
    diff = max(np.abs(features.astype(np.float64) - f_ref).max(), np.abs(tokens.astype(np.float64) - t_ref).max())
    return float(diff) if np.isfinite(diff) else float("inf")  # a NaN never passes
