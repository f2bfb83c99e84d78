"""Reading a dataset for embedding: which frames each sample contributes, read in slabs per batch.

Rows are the dataset's samples in order. A still image contributes its one frame; a clip contributes
``clip_frames`` evenly spaced frames (or its middle frame). Work is cut into *units* of consecutive rows
(one zarr chunk of the output each, the unit of resuming and of sharding between processes) and units into
batches of at most ``batch_size`` frames. A batch's frames are read from the dataset in one slab read where
they are contiguous (reading frame by frame is several times slower on sharded zarr).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from cxrjepa.core.errors import ArtifactError
from cxrjepa.data import layout
from cxrjepa.data.loader import worker_init
from cxrjepa.data.store import DatasetArtifact


@dataclass
class FramePlan:
    """Frames to embed: those of row ``i`` are ``frames[ptr[i]:ptr[i + 1]]`` (indices into ``images``)."""

    frames: np.ndarray
    ptr: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.ptr) - 1

    def counts(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = self.rows if hi is None else hi
        return np.diff(self.ptr[lo : hi + 1])


def plan_frames(starts: np.ndarray, counts: np.ndarray, clip_frames: int = 16, clip_pool: str = "mean") -> FramePlan:
    """Frame indices per sample (vectorised; a million samples take milliseconds)."""
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) and counts.min() < 1:
        raise ArtifactError("The dataset has a sample with no frames; re-run 'cxrjepa ingest' on it.")
    k = np.ones_like(counts) if clip_pool == "middle" else np.minimum(counts, clip_frames)
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(k, out=ptr[1:])
    row = np.repeat(np.arange(len(counts)), k)
    j = np.arange(ptr[-1], dtype=np.int64) - ptr[row]  # position within the sample's picks
    kk, cc = k[row], counts[row]
    # evenly spaced over the clip; one pick = the middle frame (as FrameDataset(per_sample=True) does)
    offset = np.where(kk > 1, np.round(j * (cc - 1) / np.maximum(kk - 1, 1)).astype(np.int64), cc // 2)
    return FramePlan(starts[row] + offset, ptr)


def plan_clips(starts: np.ndarray, counts: np.ndarray, length: int, stride: int = 1, windows: int = 1) -> FramePlan:
    """Frames of clip windows per sample, for clip encoders: up to ``windows`` windows of ``length`` frames
    (every ``stride``-th), evenly spread over the sample (one centred window when ``windows`` is 1 or the
    sample is shorter than a window; past its end the last frame repeats, so a still is a static clip).
    Row ``i`` gets ``n_i * length`` frames, window by window."""
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) and counts.min() < 1:
        raise ArtifactError("The dataset has a sample with no frames; re-run 'cxrjepa ingest' on it.")
    span = (length - 1) * stride + 1
    room = np.maximum(counts - span, 0)
    n = np.where(room > 0, np.minimum(windows, room + 1), 1).astype(np.int64)
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(n * length, out=ptr[1:])
    row = np.repeat(np.arange(len(counts)), n * length)
    p = np.arange(ptr[-1], dtype=np.int64) - ptr[row]
    j, k = p // length, p % length
    nn_, rr = n[row], room[row]
    offset = np.where(nn_ > 1, np.round(j * rr / np.maximum(nn_ - 1, 1)).astype(np.int64), rr // 2)
    return FramePlan(starts[row] + np.minimum(offset + k * stride, counts[row] - 1), ptr)


def plan_for(
    clip: tuple[int, int] | None, starts: np.ndarray, counts: np.ndarray, clip_frames: int = 16, clip_pool: str = "mean"
) -> FramePlan:
    """The frames embed reads: clip windows for a clip encoder (``clip`` = (frames, stride)), else
    :func:`plan_frames`. A clip encoder embeds ``clip_frames // frames`` windows per sample (at least one;
    one centred window with ``clip_pool: middle``)."""
    if clip is None:
        return plan_frames(starts, counts, clip_frames, clip_pool)
    length, stride = clip
    windows = 1 if clip_pool == "middle" else max(1, clip_frames // length)
    return plan_clips(starts, counts, length, stride, windows)


def encoder_clip(encoder) -> tuple[int, int] | None:
    """(frames, stride) of a clip encoder, None for an image encoder."""
    frames = int(getattr(encoder, "clip_frames", 1) or 1)
    return (frames, int(getattr(encoder, "clip_stride", 1) or 1)) if frames > 1 else None


def unit_ranges(n_rows: int, unit_rows: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + unit_rows, n_rows)) for lo in range(0, n_rows, unit_rows)]


def plan_batches(plan: FramePlan, units: Sequence[int], unit_rows: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(unit, lo, hi) row ranges, each at most ``batch_size`` frames (one sample at least), unit by unit."""
    out = []
    for u in units:
        lo, hi = u * unit_rows, min((u + 1) * unit_rows, plan.rows)
        start = lo
        while start < hi:
            # the largest end with frames(start:end) <= batch_size, at least start + 1
            limit = plan.ptr[start] + batch_size
            end = int(np.searchsorted(plan.ptr, limit, side="right")) - 1
            end = min(max(end, start + 1), hi)
            out.append((int(u), start, end))
            start = end
    return out


def read_frames(images, frames: np.ndarray) -> np.ndarray:
    """``images[frames]`` with as few zarr reads as possible."""
    first, last = int(frames[0]), int(frames[-1])
    span = last - first + 1
    if span == len(frames) and np.all(np.diff(frames) == 1):
        return np.asarray(images[first : last + 1])
    if np.all(np.diff(frames) >= 0) and span <= 2 * len(frames):
        return np.asarray(images[first : last + 1])[frames - first]
    return np.asarray(images.get_orthogonal_selection((frames,)))


class BatchReader(Dataset):
    """One item per batch: ``{"unit", "lo", "hi", "frames" (F, H, W) integer tensor, "counts" (hi - lo,)}``."""

    def __init__(self, data: DatasetArtifact, plan: FramePlan, batches: list[tuple[int, int, int]]):
        self.path = data.path
        self.plan = plan
        self.batches = batches
        self._images = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.batches)

    def images(self):
        """This process's own zarr handle (a handle inherited through fork can deadlock zarr's I/O loop)."""
        if self._images is None or self._pid != os.getpid():
            self._images = zarr.open_group(str(self.path / layout.ZARR), mode="r")[layout.IMAGES]
            self._pid = os.getpid()
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None, "_pid": None}

    def __getitem__(self, k: int) -> dict:
        unit, lo, hi = self.batches[k]
        fr = self.plan.frames[self.plan.ptr[lo] : self.plan.ptr[hi]]
        arr = read_frames(self.images(), fr)
        if arr.dtype == np.uint16:  # torch has few uint16 kernels; int32 holds it exactly
            arr = arr.astype(np.int32)
        return {
            "unit": unit,
            "lo": lo,
            "hi": hi,
            "frames": torch.from_numpy(np.ascontiguousarray(arr)),
            "counts": torch.from_numpy(self.plan.counts(lo, hi)),
        }


def auto_workers(n_batches: int, world: int = 1) -> int:
    """Reader processes: none for small jobs or small machines (the forward pass owns the cores)."""
    cpus = os.cpu_count() or 1
    per_rank = cpus // max(world, 1)
    if n_batches < 8 or per_rank <= 2:
        return 0
    return min(6, per_rank // 2)


def batch_loader(data: DatasetArtifact, plan: FramePlan, batches, *, workers: int, pin_memory: bool) -> DataLoader:
    kwargs = {"prefetch_factor": 4, "worker_init_fn": worker_init, "persistent_workers": False} if workers > 0 else {}
    return DataLoader(
        BatchReader(data, plan, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        **kwargs,
    )
