"""PyTorch datasets over a dataset artifact (used by pretrain and embed).

Items are dicts ``{"image": float tensor (1, H, W), "index": sample or frame index, "sample": sample
index, "sample_id": the sample's id}`` with intensities scaled to [0, 1] (``stored / max``); models apply
their own mean/std normalization. The zarr store is opened lazily in each worker, so loaders work under
fork and spawn; per-sample indices travel to workers as compact numpy arrays, not as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrjepa.data.store import DatasetArtifact


def _as_dataset(data: DatasetArtifact | str | Path) -> DatasetArtifact:
    return data if isinstance(data, DatasetArtifact) else DatasetArtifact.open(data)


class FrameDataset(Dataset):
    """One item per stored frame (every frame of every clip), or per sample with ``per_sample=True``
    (a sample's middle frame)."""

    def __init__(
        self,
        data: DatasetArtifact | str | Path,
        indices: Sequence[int] | None = None,
        *,
        per_sample: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.data = _as_dataset(data)
        self.per_sample = per_sample
        starts, counts = self.data.frame_index
        self.starts = starts
        self.ids = np.asarray(self.data.sample_ids, dtype="S")  # fixed-width bytes: cheap to pickle
        if per_sample:
            self.frame_of = (starts + counts // 2).astype(np.int64)
            n = len(self.frame_of)
        else:
            self.frame_of = None
            n = int(self.data.images.shape[0])
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.scale = 1.0 / self.data.max_value

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        idx = int(self.indices[k])
        if self.frame_of is None:
            frame = idx
            sample = int(np.searchsorted(self.starts, idx, side="right")) - 1
        else:
            frame, sample = int(self.frame_of[idx]), idx
        arr = np.asarray(self.data.images[frame])
        img = torch.from_numpy(arr.astype(np.float32) * self.scale).unsqueeze(0)
        if self.transform is not None:
            img = self.transform(img)
        return {"image": img, "index": idx, "sample": sample, "sample_id": self.ids[sample].decode()}


def worker_init(_worker_id: int) -> None:
    """DataLoader worker setup: single-threaded OpenCV and torch (avoids deadlocks and oversubscription)."""
    try:
        import cv2

        cv2.setNumThreads(0)
    except Exception:
        pass
    torch.set_num_threads(1)
